"""Greedy generation. A decode step is a chunk of one token (phase="decode").

The token chosen last is returned but not fed: the caller decides what follows it (the session
keeps it pending and prefills it with the next chunk), so no logits are computed for a token
whose continuation is never needed.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Generation:
    tokens: list[int]  # generated ids, the stop token included when reached
    stopped: bool  # True if a stop token ended it, False if the cap did


def greedy(
    logits: np.ndarray,
    step: Callable[[int], np.ndarray],
    *,
    max_tokens: int,
    stop_ids: Collection[int] = (),
) -> Generation:
    """Pick argmax tokens until a stop id or `max_tokens`.

    logits [V]: next-token logits after the prompt; step(token) feeds one token at the next
    position and returns the following logits [V]."""
    tokens: list[int] = []
    if max_tokens <= 0:
        return Generation(tokens, False)
    stops = frozenset(int(s) for s in stop_ids)
    while True:
        tok = int(np.argmax(logits))
        tokens.append(tok)
        if tok in stops:
            return Generation(tokens, True)
        if len(tokens) >= max_tokens:
            return Generation(tokens, False)
        logits = step(tok)


def softmax_prob(logits: np.ndarray, index: int) -> float:
    """P(index) under softmax(logits [V]), computed stably in float64."""
    x = logits.astype(np.float64)
    m = x.max()
    return float(np.exp(x[index] - m) / np.exp(x - m).sum())
