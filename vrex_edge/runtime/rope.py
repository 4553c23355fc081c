"""Rotary position embedding on the host (HF "rotate_half" layout).

The stage graphs emit q and k before RoPE, so the runtime decides positions at attention time
(absolute positions, or compact positions for streams longer than the trained context).
"""

from __future__ import annotations

import numpy as np

from vrex_edge.bundle import RopeSpec


class Rope:
    def __init__(self, spec: RopeSpec):
        self.inv_freq = np.asarray(spec.inv_freq, dtype=np.float32)  # [hd/2]
        self.scale = np.float32(spec.attention_scaling)

    def cos_sin(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """positions [n] -> cos, sin [n, hd] (float32, as the reference computes them)."""
        freqs = positions.astype(np.float32)[:, None] * self.inv_freq[None, :]  # [n, hd/2]
        emb = np.concatenate([freqs, freqs], axis=-1)  # [n, hd]
        return np.cos(emb) * self.scale, np.sin(emb) * self.scale

    def apply(self, x: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """x [..., n, hd] -> x rotated to `positions` [n] (or [..., n] per-row positions)."""
        cos, sin = self.cos_sin(positions.reshape(-1))
        cos = cos.reshape(*positions.shape, -1)
        sin = sin.reshape(*positions.shape, -1)
        half = x.shape[-1] // 2
        rot = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)  # rotate_half(x)
        return (x * cos + rot * sin).astype(np.float32, copy=False)

    def shift(self, x: np.ndarray, delta: np.ndarray) -> np.ndarray:
        """Re-rotate keys already rotated to p so they sit at p + delta (delta [n] or [..., n])."""
        cos, sin = self.cos_sin(delta.reshape(-1))
        if self.scale != 1:  # a pure rotation: undo the attention scaling folded into cos/sin
            cos, sin = cos / self.scale, sin / self.scale
        cos = cos.reshape(*delta.shape, -1)
        sin = sin.reshape(*delta.shape, -1)
        half = x.shape[-1] // 2
        rot = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
        return (x * cos + rot * sin).astype(np.float32, copy=False)
