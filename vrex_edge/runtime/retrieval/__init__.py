"""Retrieval policies (one module each), registered with kvcache.register_policy on import."""

from vrex_edge.runtime.retrieval import resv, topk, window  # noqa: F401  (registration)
from vrex_edge.runtime.retrieval.base import PhaseTotals, WindowedCache

__all__ = ["PhaseTotals", "WindowedCache"]
