"""Amortised growth of preallocated arrays (the one helper every growing buffer uses)."""

from __future__ import annotations

from typing import Any

import numpy as np


def staggered(base: int, layer: int) -> int:
    """A first capacity for layer `layer`'s doubling arrays, in [base, 2 * base): the fractional parts of
    layer / golden ratio spread the layers over the octave, so layers that fill in lockstep do not all
    double (copy their whole history) in the same frame: at 40K tokens 30 layers' arenas grow ~35
    10-token frames apart instead of together (a 1.8 GB copy in one frame for SmolLM2)."""
    return int(base * 2 ** ((layer * 0.6180339887498949) % 1.0))


def capacity(cap: int, need: int, *, factor: float = 2.0, minimum: int = 0) -> int:
    """The capacity to grow to from `cap` so that `need` fits: at least cap * factor (amortised
    O(1) appends) and `minimum`."""
    return max(need, int(cap * factor), minimum)


def grow(
    a: np.ndarray,
    need: int,
    *,
    axis: int = 0,
    used: int | None = None,
    fill: Any = None,
    factor: float = 2.0,
    minimum: int = 0,
) -> np.ndarray:
    """`a` if its length along `axis` is >= need; else a new array of capacity(...) along `axis`
    holding a's first `used` entries (default: all of them), the rest `fill` (None: uninitialised).

    factor < 2 trades more reallocations for a smaller transient (old and new coexist while copying)."""
    cap = a.shape[axis]
    if need <= cap:
        return a
    shape = list(a.shape)
    shape[axis] = capacity(cap, need, factor=factor, minimum=minimum)
    b = np.empty(shape, a.dtype) if fill is None else np.full(shape, fill, a.dtype)
    n = cap if used is None else used
    idx = (slice(None),) * (axis % a.ndim) + (slice(0, n),)
    b[idx] = a[idx]
    return b
