"""What a session on KV tiers holds resident whatever it selects: the budget's fixed bound, and the
cap on retrieved tokens that the budget leaves beside it.

Per layer the sink, the recent window and the open-cluster area are resident and cannot be evicted.
Their largest size follows from the options and the model's dimensions: the window holds sink +
recent tokens (its ring grows to 2 x (recent + cluster_batch - 1 + CHUNK) rows), the open area of
a KV head at most min(open_rows, horizon x (max_cluster - 1)) tokens of its open clusters plus one
batch leaving the window. Beside them the budget must hold one attended set (sink + recent + the retrieved tokens:
max_kept of them when given, else one cluster's worth), one cluster in the hot cache (a gather's
smallest run) and the copy scratch. A budget below that sum is refused before the stream starts.

Everything above the fixed parts goes to the attended set and the hot cache, and the attended set
is capped to what is left (`retrieved_cap`), so a budget accepted at start cannot run out in the
middle of a stream. The bound covers chunks of up to CHUNK tokens (a frame, a reply step, a short
question); a longer chunk grows the window and the open area past it once, which the cap absorbs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vrex_edge.runtime.kvstore.buffers import _mib

CHUNK = 64  # tokens per chunk the bound is computed for (the recent ring's own slack)


def open_row_bytes(hd: int) -> int:
    """One row of the open area (WatchedRows): k, v f32 [hd], pos and owner i64."""
    return 2 * hd * 4 + 16


def attended_row_bytes(kvh: int, hd: int) -> int:
    """One token of the attended set, every KV head: k, v f32 [hd] and pos i64 (the workspace)."""
    return kvh * (2 * hd * 4 + 8)


def open_rows_max(cache: Any) -> int:
    """The open area of one KV head at its largest: every open cluster one token short of
    max_cluster, plus a batch leaving the window."""
    st = cache.store
    most = st.horizon * (st.max_size - 1)
    return (min(most, st.max_open) if st.max_open else most) + window_overflow(cache)


def window_overflow(cache: Any) -> int:
    """Tokens past `recent` that the window holds between two calls, plus one chunk."""
    return cache.absorb_batch - 1 + CHUNK


@dataclass(frozen=True)
class FixedBound:
    """Bytes a session always holds resident, by part (all layers), and what drives them."""

    window: int  # sink + recent ring
    open: int  # open-cluster areas at their largest, plus one head's growth (old and new coexist)
    attended: int  # the smallest attended set
    hot: int  # one cluster record in the hot cache
    scratch: int  # the copy scratch and the read-gap buffer, at this budget
    minimum: int  # the smallest budget whose bound it covers (the scratch grows with the budget)
    drivers: str  # the options behind it, in words

    @property
    def total(self) -> int:
        return self.window + self.open + self.attended + self.hot + self.scratch

    def refusal(self, budget: int) -> str:
        """The one-line reason a budget below the bound is refused."""
        return (
            f"--kv-budget {_mib(budget)} is below the {_mib(self.minimum)} these options always keep resident "
            f"(sink and recent window {_mib(self.window)}, open clusters {_mib(self.open)}, "
            f"the smallest attended set {_mib(self.attended)}; {self.drivers}); "
            f"give --kv-budget {_ceil_mib(self.minimum)} or more, or lower open_rows, recent or cluster_batch"
        )


def fixed_bound(caches: list[Any], *, scratch: Callable[[int], int], budget: int) -> FixedBound:
    """The fixed bound of a session whose layer caches are `caches` (ReSV caches built over the tiers)
    under `budget`; scratch(b): the copy scratch and read-gap buffer under a budget b."""
    window = opened = grow = attended = hot = 0
    for c in caches:
        rows = max(c.ring.k.shape[1], 2 * (c.recent + window_overflow(c)))
        ring = rows * c.kvh * c.hd * 4 * (2 if c.ring.aux is None else 3)
        window += c.sink_k.nbytes + c.sink_v.nbytes + ring
        head = open_rows_max(c) * open_row_bytes(c.hd)
        opened += c.kvh * head
        grow = max(grow, head)
        kept = c.max_kept or c.store.max_size
        need = c.sink + kept + c.recent + window_overflow(c)
        if c.compact:
            need = min(need, c.max_positions)
        attended = max(attended, need * attended_row_bytes(c.kvh, c.hd))
        hot = max(hot, c.store.max_size * (2 * c.hd + 2) * 4)
    c = caches[0]
    st = c.store
    drivers = (
        f"{len(caches)} layer{'s' if len(caches) != 1 else ''} x {c.kvh} KV heads, sink {c.sink}, recent {c.recent}, "
        f"open tokens per head: open_rows {st.max_open} (horizon {st.horizon} x max_cluster {st.max_size} at most)"
        + (f", max_kept {c.max_kept}" if c.max_kept else "")
    )
    fixed = window + opened + grow + attended + hot
    least = fixed + scratch(fixed)
    while fixed + scratch(least) > least:  # the scratch grows slowly with the budget: a few steps
        least = fixed + scratch(least)
    return FixedBound(window, opened + grow, attended, hot, scratch(budget), least, drivers)


def _ceil_mib(n: int) -> str:
    """A --kv-budget value of at least n bytes ('27M', or '900K' below 1 MiB)."""
    if n >= 1 << 20:
        return f"{-(-n // (1 << 20))}M"
    return f"{-(-n // (1 << 10))}K"
