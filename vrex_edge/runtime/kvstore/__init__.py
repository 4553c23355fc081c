"""Hierarchical KV memory for endless streams (docs/resv-spec.md, "KV offload"; docs/tiers.md).

Resident: sink, recent window, open clusters, cluster tables, a shared attention workspace and
an LRU cache of hot clusters, all under one byte budget. Cold: one on-disk log per layer,
written cluster-contiguous when a cluster seals. A session builds its ReSV caches over a
TierManager's `storage`, then binds them (`TierManager.bind`).
"""

from vrex_edge.runtime.kvstore.config import KVStoreError, TierConfig, parse_bytes
from vrex_edge.runtime.kvstore.tiers import TieredStorage, TierManager

__all__ = ["KVStoreError", "TierConfig", "TierManager", "TieredStorage", "parse_bytes"]
