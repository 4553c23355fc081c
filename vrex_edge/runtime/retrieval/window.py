"""`window`: StreamingLLM-style sink + recent window; older tokens are dropped."""

from __future__ import annotations

from dataclasses import dataclass

from vrex_edge.bundle import TextSpec
from vrex_edge.runtime.retrieval.base import POSITION_MODES, WindowedCache
from vrex_edge.runtime.retrieval.options import WindowedOptions, opt
from vrex_edge.runtime.retrieval.policy import Policy, PolicySpec
from vrex_edge.runtime.retrieval.storage import KVStorage
from vrex_edge.runtime.rope import Rope


@dataclass(frozen=True)
class WindowOptions(WindowedOptions):
    policy = "window"
    recent: int = opt(1024, lo=0, help="last tokens attended")
    positions: str = opt("absolute", choices=POSITION_MODES, help="absolute stream positions or compact 0..L-1")


class WindowCache(WindowedCache):
    """Attends to sink + recent + chunk; `_absorb` (the base's) forgets the tokens leaving the window."""


def _build(policy: Policy, layer: int, text: TextSpec, rope: Rope, storage: KVStorage) -> WindowCache:
    o = policy.options
    assert isinstance(o, WindowOptions)
    # KV and attention on the GPU (retrieval/device.py); compact positions stay on the host
    if policy.device == "cuda" and policy.options.positions != "compact":
        from vrex_edge.runtime.retrieval.device import DeviceWindowKV

        return DeviceWindowKV(
            text, rope, sink=o.sink, recent=o.recent, positions=o.positions, engine=policy.device_engine
        )
    compact = o.positions == "compact"
    return WindowCache(
        text,
        rope,
        sink=o.sink,
        recent=o.recent,
        positions=o.positions,
        table=policy.rope_table(rope, text) if compact else None,
        buffer=storage.buffer(layer, text.num_kv_heads, text.head_dim, keeps_rows=False),
        engine=policy.engine,
    )


SPEC = PolicySpec("window", WindowOptions, _build, "sink + recent window (StreamingLLM)")
