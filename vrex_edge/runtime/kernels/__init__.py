"""Attention kernels behind one small interface, and the registry of engines that run them.

    engine = make_engine("ort-cpu", threads=2)        # once per session
    o = attend(q, [Segment(k, v, lens)], k_new, v_new, engine=engine)   # [KVH, G, n, hd]

An engine computes exact softmax attention of a chunk's queries over KV segments (each with its
own per-head lengths) plus the chunk itself, causal among itself, without concatenating the
history. `numpy` is always present and `reference.attend_reference` is the oracle both are tested
against. The engine is chosen by benchmarks/results/attention.md. `ort-cuda` (ort_cuda.py) is the
device engine: onnxruntime's CUDA provider over KV arenas in device OrtValues (DeviceKV), which the
policies use when the session runs on CUDA (full: retrieval/full.py; resv, topk, window:
retrieval/device.py, device_resv.py; benchmarks/results/gpu.md).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

from vrex_edge.errors import ConfigError
from vrex_edge.runtime.kernels.segments import Segment, segment_lens

__all__ = [
    "AttentionEngine",
    "Segment",
    "attend",
    "default_engine",
    "engine_names",
    "make_engine",
    "merge_heads",
    "register_engine",
    "segment_lens",
]

DEFAULT_ENGINE = "ort-cpu"


class AttentionEngine(Protocol):
    name: str

    def attend(self, q: np.ndarray, segments: Sequence[Segment], k_new: Any, v_new: Any) -> np.ndarray:
        """q [KVH, G, n, hd] rotated queries (n >= 1); head h attends to seg.k[h, :lens[h]] of every
        segment, then to k_new/v_new [KVH, n, hd] causally -> [KVH, G, n, hd] float32."""
        ...


_ENGINES: dict[str, Callable[..., AttentionEngine]] = {}
_local = threading.local()


def register_engine(name: str, make: Callable[..., AttentionEngine]) -> None:
    """`make(threads=...)` builds an engine; called once per session (engines hold scratch, not thread-safe)."""
    _ENGINES[name] = make


def engine_names() -> list[str]:
    return sorted(_ENGINES)


def make_engine(name: str = DEFAULT_ENGINE, *, threads: int = 1) -> AttentionEngine:
    if name not in _ENGINES:
        raise ConfigError(f"unknown attention engine '{name}' (choose from: {', '.join(engine_names())})")
    if threads < 1:
        raise ConfigError(f"attention threads must be >= 1, got {threads}")
    return _ENGINES[name](threads=threads)


def default_engine() -> AttentionEngine:
    """The engine for caches built without one: DEFAULT_ENGINE, one instance per thread."""
    eng = getattr(_local, "engine", None)
    if eng is None:
        eng = _local.engine = make_engine(DEFAULT_ENGINE)
    return eng


def attend(
    q: np.ndarray, segments: Sequence[Segment], k_new: Any, v_new: Any, *, engine: AttentionEngine | None = None
) -> np.ndarray:
    """`engine.attend` (see AttentionEngine) with the default engine when none is given."""
    return (engine or default_engine()).attend(q, segments, k_new, v_new)


def merge_heads(o: np.ndarray) -> np.ndarray:
    """[KVH, G, n, hd] -> [n, H*hd] (the layout the post-attention graph takes)."""
    kvh, g, n, hd = o.shape
    return o.reshape(kvh * g, n, hd).transpose(1, 0, 2).reshape(n, kvh * g * hd)


def _numpy(*, threads: int = 1) -> AttentionEngine:
    from vrex_edge.runtime.kernels.numpy_engine import NumpyEngine

    return NumpyEngine()  # numpy's BLAS pool is sized process-wide (runtime/threads.py), not here


def _ort_cpu(*, threads: int = 1) -> AttentionEngine:
    from vrex_edge.runtime.kernels.ort_engine import OrtEngine
    from vrex_edge.runtime.lanes import default_lanes

    return OrtEngine(threads=threads, lanes=default_lanes())  # long histories on every core (ort_engine.py)


def _ort_cuda(*, threads: int = 1) -> AttentionEngine:
    from vrex_edge.runtime.kernels.ort_cuda import OrtDeviceEngine

    return OrtDeviceEngine(threads=threads, device="cuda")  # ConfigError saying what to install without CUDA


register_engine("numpy", _numpy)
register_engine("ort-cpu", _ort_cpu)
register_engine("ort-cuda", _ort_cuda)
