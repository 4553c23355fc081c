"""The retrieval-backend interface: what a DRE (host, emulator or FPGA) computes for ReSV.

Three operations cross it, all on plain numpy arrays (docs/resv-spec.md, sections 3 and 5):
  - hash + cluster-assign (Hash-bit Cluster Unit),
  - score + WiCSum select (WiCSum Threshold Unit),
  - layout of the selected clusters as contiguous runs (KV management unit).
The NumPy host reference (`host`) is always registered and is the oracle for the others.
Third-party backends register through the entry-point group `vrex_edge.accel`.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Protocol, runtime_checkable

import numpy as np

from vrex_edge.errors import AccelError

ENTRY_POINT_GROUP = "vrex_edge.accel"


@runtime_checkable
class RetrievalBackend(Protocol):
    name: str

    def hash_codes(self, keys: np.ndarray, planes: np.ndarray) -> np.ndarray:
        """keys [..., m, hd] f32, planes [..., bits, hd] (+-1) -> codes [..., m, words] uint64.

        Bit b of the code (word b // 64, bit b % 64) is 1 when planes[b] . key > 0."""
        ...

    def cluster_assign(
        self,
        codes: np.ndarray,
        cand_codes: np.ndarray,
        cand_counts: np.ndarray,
        *,
        threshold: int,
        max_size: int,
        horizon: int,
    ) -> np.ndarray:
        """Online clustering of one KV head's tokens leaving the recent window.

        codes [m, W] uint64, tokens in stream order; cand_codes [c, W], cand_counts [c]: the open
        clusters, oldest first. Token i, in order, joins the candidate with the smallest Hamming
        distance (ties: the newest) among the last `horizon` entries of the list (given clusters,
        then clusters opened earlier in this batch) that hold < max_size tokens and lie within
        `threshold`; otherwise it opens a new cluster whose code is its own code.
        Returns assign [m] int64: an index into that list (>= c: opened by this batch, in order).
        """
        ...

    def score_select(
        self,
        q: np.ndarray,
        reps: np.ndarray,
        counts: np.ndarray,
        *,
        tau: float,
    ) -> tuple[np.ndarray, np.ndarray]:
        """WiCSum per KV head.

        q [KVH, R, hd]: the queries (chunk tokens x GQA heads) in the same key space as reps;
        reps [KVH, C, hd] cluster representatives; counts [KVH, C] (0 = no cluster).
        mass_j = mean over the R queries of the normalised TC_j * exp(s_j - max s), s = q.rep/sqrt(hd).
        Returns keep [KVH, C] bool, mass [KVH, C] f32: per head the heaviest clusters whose mass
        first reaches tau * total (the shortest such set; tau >= 1 keeps every cluster).
        """
        ...

    def layout(self, selected: np.ndarray, start: np.ndarray, length: np.ndarray) -> np.ndarray:
        """selected [k] cluster ids; start, length [C]: each cluster's contiguous range in the arena.

        Returns runs [r, 2] int64 (start, stop), sorted, adjacent ranges merged: the transfer list."""
        ...


BackendFactory = Callable[[], RetrievalBackend]
_BACKENDS: dict[str, BackendFactory] = {}
_loaded_entry_points = False


def register_backend(name: str, make: BackendFactory) -> None:
    """Register a backend factory under `name` (later registrations replace earlier ones)."""
    _BACKENDS[name] = make


def _load_entry_points() -> None:
    global _loaded_entry_points
    if _loaded_entry_points:
        return
    _loaded_entry_points = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name not in _BACKENDS:
            _BACKENDS[ep.name] = ep.load()


def backend_names() -> list[str]:
    _load_entry_points()
    return sorted(_BACKENDS)


def get_backend(name: str = "host") -> RetrievalBackend:
    """Instantiate the backend registered as `name`; AccelError says which exist or why it failed."""
    if name not in _BACKENDS:
        _load_entry_points()
    if name not in _BACKENDS:
        raise AccelError(f"unknown retrieval backend '{name}' (available: {', '.join(backend_names())})")
    try:
        return _BACKENDS[name]()
    except AccelError:
        raise
    except Exception as e:  # a driver that cannot open its device, a missing dependency, ...
        raise AccelError(f"retrieval backend '{name}' is unavailable: {e}") from e


def hyperplanes(layer: int, kv_heads: int, bits: int, head_dim: int, *, seed: int = 0) -> np.ndarray:
    """Fixed-seed Rademacher (+-1) hyperplanes per layer and KV head -> [KVH, bits, hd] float32."""
    rng = np.random.default_rng([seed, layer])
    return rng.choice(np.array([-1.0, 1.0], dtype=np.float32), size=(kv_heads, bits, head_dim))
