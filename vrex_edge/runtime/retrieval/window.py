"""`window`: StreamingLLM-style sink + recent window; older tokens are dropped."""

from __future__ import annotations

from vrex_edge.bundle import TextSpec
from vrex_edge.runtime.kvcache import CacheFactory, register_policy
from vrex_edge.runtime.retrieval.base import WindowedCache
from vrex_edge.runtime.retrieval.options import check_options, table_cache
from vrex_edge.runtime.rope import Rope

DEFAULTS = dict(sink=32, recent=1024, positions="absolute")


class WindowCache(WindowedCache):
    """Attends to sink + recent + chunk; `_absorb` (the base's) forgets the tokens leaving the window."""


def make_window(**options: object) -> CacheFactory:
    o = check_options("window", DEFAULTS, options)
    tables = table_cache()

    def factory(layer: int, text: TextSpec, rope: Rope) -> WindowCache:
        table = tables(rope, text) if o["positions"] == "compact" else None
        return WindowCache(text, rope, sink=int(o["sink"]), recent=int(o["recent"]), positions=str(o["positions"]),
                           table=table)

    return factory


register_policy("window", make_window)
