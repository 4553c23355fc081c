"""Hierarchical KV memory for endless streams (issue 7, resv.md section 4).

Resident: sink, recent window, open clusters, cluster tables, a shared attention workspace and
an LRU cache of hot clusters, all under one byte budget. Cold: one on-disk log per layer,
written cluster-contiguous when a cluster seals. `attach_tiers` hooks a session's ReSV caches.
"""

from vrex_edge.runtime.kvstore.config import KVStoreError, TierConfig, parse_bytes
from vrex_edge.runtime.kvstore.tiers import TierManager, attach_tiers

__all__ = ["KVStoreError", "TierConfig", "TierManager", "attach_tiers", "parse_bytes"]
