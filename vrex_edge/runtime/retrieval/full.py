"""`full`: the reference policy: every cached token, at its absolute position.

`FullKV` keeps the cache in host memory; `DeviceFullKV` (sessions on CUDA) keeps it on the GPU in
the ort-cuda engine's arena (runtime/kernels/ort_cuda.py), with the same outputs and state.
`OffloadedFullKV` is full attention under a device budget, as transformers' OffloadedCache streams a
layer's KV to the GPU for each call: the baseline of the device KV tiers (benchmarks/bench_gpu_caches.py;
the CLI's --kv-budget is resv's)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from vrex_edge.bundle import TextSpec
from vrex_edge.runtime import kernels
from vrex_edge.runtime.arrays import staggered
from vrex_edge.runtime.kernels.ort_cuda import HostKV
from vrex_edge.runtime.kvcache import GrowingArray, LayerStats, Phase
from vrex_edge.runtime.retrieval.options import NoOptions, opt
from vrex_edge.runtime.retrieval.policy import Policy, PolicySpec
from vrex_edge.runtime.retrieval.storage import KVStorage
from vrex_edge.runtime.rope import Rope

if TYPE_CHECKING:
    from vrex_edge.runtime.kernels.ort_cuda import OrtDeviceEngine


@dataclass(frozen=True)
class FullOptions(NoOptions):
    policy = "full"
    engine: str = opt(
        "default",
        choices=("default", "numpy", "ort-cpu"),
        affects=False,
        help="host attention kernel (numpy: the reference path; benchmarks compare them)",
    )


class FullKV:
    """Attend to every cached token at its absolute position."""

    def __init__(
        self, text: TextSpec, rope: Rope, *, engine: kernels.AttentionEngine | None = None, capacity: int = 256
    ):
        """capacity: the first capacity of the doubling k/v arrays (staggered per layer by the policy)."""
        self.h, self.kvh, self.hd = text.num_heads, text.num_kv_heads, text.head_dim
        self.rope = rope
        self.engine = engine or kernels.default_engine()  # runtime/kernels: chosen once, not per call
        self.k = GrowingArray(self.kvh, self.hd, capacity)  # rotated keys at absolute positions
        self.v = GrowingArray(self.kvh, self.hd, capacity)
        self._stats = LayerStats()

    def attend(self, q: np.ndarray, k: np.ndarray, v: np.ndarray, positions: np.ndarray, *, phase: Phase) -> np.ndarray:
        n = q.shape[1]
        q = self.rope.apply(q, positions)  # [H, n, hd]
        k = self.rope.apply(k, positions)  # [KVH, n, hd]
        hist = self.k.n
        segs = [kernels.Segment(self.k.view, self.v.view)]  # every cached token, [KVH, hist, hd]
        out = self.engine.attend(q.reshape(self.kvh, -1, n, self.hd), segs, k, v)  # [KVH, G, n, hd]
        self.k.append(k)
        self.v.append(v)
        self._stats = LayerStats(history=hist, kept=np.full(self.kvh, hist, dtype=np.int64))
        return out.reshape(self.h, n, self.hd).transpose(1, 0, 2).reshape(n, self.h * self.hd)

    @property
    def length(self) -> int:
        return self.k.n

    def nbytes(self) -> int:
        return self.k.nbytes() + self.v.nbytes()

    def stats(self) -> LayerStats:
        return self._stats

    def state(self) -> dict[str, Any]:
        return {"k": self.k.view, "v": self.v.view}

    def restore(self, s: dict[str, Any]) -> None:
        self.k.n = self.v.n = 0
        self.k.append(s["k"])
        self.v.append(s["v"])


class DeviceFullKV:
    """FullKV with k, v in device memory: each chunk attends and is appended in one graph run; only
    the chunk's q/k/v go in and a few KB of partial results come out (kernels/ort_cuda.py)."""

    def __init__(self, text: TextSpec, rope: Rope, *, engine: OrtDeviceEngine):
        self.h, self.kvh, self.hd = text.num_heads, text.num_kv_heads, text.head_dim
        self.rope = rope
        self.engine = engine
        self.kv = engine.new_kv(self.kvh, self.hd)  # rotated keys at absolute positions, [cap, KVH, hd] on the device
        self._stats = LayerStats()

    def attend(self, q: np.ndarray, k: np.ndarray, v: np.ndarray, positions: np.ndarray, *, phase: Phase) -> np.ndarray:
        n = q.shape[1]
        q = self.rope.apply(q, positions)  # [H, n, hd]
        k = self.rope.apply(k, positions)  # [KVH, n, hd]
        hist = self.kv.n
        out = self.engine.attend_append(q.reshape(self.kvh, -1, n, self.hd), self.kv, k, v)  # [KVH, G, n, hd]
        self._stats = LayerStats(history=hist, kept=np.full(self.kvh, hist, dtype=np.int64))
        return out.reshape(self.h, n, self.hd).transpose(1, 0, 2).reshape(n, self.h * self.hd)

    def extend(self, k: np.ndarray, v: np.ndarray, positions: np.ndarray, *, chunk: int = 0) -> None:
        """Append un-rotated k, v [KVH, m, hd] at `positions` without attending (benchmark fills)."""
        self.engine.upload(self.kv, self.rope.apply(k, positions), v)

    @property
    def length(self) -> int:
        return self.kv.n

    def nbytes(self) -> int:
        return self.kv.nbytes()  # device memory

    def stats(self) -> LayerStats:
        return self._stats

    def state(self) -> dict[str, Any]:
        """The same state as FullKV's (host copies k, v [KVH, n, hd]): a stream resumes on either."""
        k, v = self.engine.download(self.kv)
        return {"k": k, "v": v}

    def restore(self, s: dict[str, Any]) -> None:
        self.kv.n = 0
        self.engine.upload(self.kv, s["k"], s["v"])


class OffloadedFullKV:
    """Full attention with only the first `resident` tokens' k, v on the device; the later ones live in
    host memory (token-major, kernels/ort_cuda.HostKV) and are copied to the device by every call (one
    bulk copy each for k and v, into a buffer of the run), then the chunk attends to all of them in one
    run (kernels: `attend_split`). Which tokens stay resident does not change what a call copies, so the
    oldest do (no token ever moves back). Same outputs and state as FullKV; `uploads` counts the copies."""

    def __init__(self, text: TextSpec, rope: Rope, *, engine: OrtDeviceEngine, resident: int):
        self.h, self.kvh, self.hd = text.num_heads, text.num_kv_heads, text.head_dim
        self.rope, self.engine, self.resident = rope, engine, resident
        self.kv = engine.new_kv(self.kvh, self.hd, max(resident, 1), exact=True)  # [resident, KVH, hd] on the device
        self.host = HostKV(self.kvh, self.hd)  # tokens resident .. n - 1
        self.uploads = {"bytes": 0, "calls": 0}
        self.last_upload = 0
        self._stats = LayerStats()

    def attend(self, q: np.ndarray, k: np.ndarray, v: np.ndarray, positions: np.ndarray, *, phase: Phase) -> np.ndarray:
        n = q.shape[1]
        q = self.rope.apply(q, positions).reshape(self.kvh, -1, n, self.hd)  # [KVH, G, n, hd]
        k = self.rope.apply(k, positions)  # [KVH, n, hd]
        hist = self.length
        if self.host.n == 0 and self.kv.n + n <= self.resident:  # still within the device part
            out = self.engine.attend_append(q, self.kv, k, v)
            self.last_upload = 0
        else:
            h = self.host.n
            out = self.engine.attend_split(q, self.kv, self.host.k[:h], self.host.v[:h], k, v)
            self.host.append(k, v)
            self.last_upload = 2 * h * self.kvh * self.hd * 4
        self.uploads["bytes"] += self.last_upload
        self.uploads["calls"] += 1
        self._stats = LayerStats(history=hist, kept=np.full(self.kvh, hist, dtype=np.int64))
        return out.reshape(self.h, n, self.hd).transpose(1, 0, 2).reshape(n, self.h * self.hd)

    @property
    def length(self) -> int:
        return self.kv.n + self.host.n

    def nbytes(self) -> int:
        return self.kv.nbytes() + self.host.nbytes()  # device memory + host memory

    def stats(self) -> LayerStats:
        return self._stats

    def state(self) -> dict[str, Any]:
        """FullKV's state (k, v [KVH, n, hd]): the device part then the host part."""
        dk, dv = self.engine.download(self.kv)
        hk, hv = self.host.head_major()
        return {"k": np.concatenate([dk, hk], axis=1), "v": np.concatenate([dv, hv], axis=1)}

    def restore(self, s: dict[str, Any]) -> None:
        r = min(self.resident, s["k"].shape[1])
        self.kv.n = 0
        self.engine.upload(self.kv, s["k"][:, :r], s["v"][:, :r])
        self.host = HostKV(self.kvh, self.hd, max(s["k"].shape[1] - r, 1))
        self.host.append(s["k"][:, r:], s["v"][:, r:])


def _build(policy: Policy, layer: int, text: TextSpec, rope: Rope, storage: KVStorage) -> FullKV | DeviceFullKV:
    if policy.device == "cuda":
        return DeviceFullKV(text, rope, engine=policy.device_engine)
    o = policy.options
    assert isinstance(o, FullOptions)
    engine = policy.engine if o.engine == "default" else kernels.make_engine(o.engine)
    return FullKV(text, rope, engine=engine, capacity=staggered(256, layer))


SPEC = PolicySpec("full", FullOptions, _build, "every cached token (the reference)")
