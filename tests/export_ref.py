"""Test helpers: run a bundle's stages with onnxruntime and NumPy host attention (full KV), as an
independent check that the stages plus the manifest's RoPE data reproduce the PyTorch model."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vrex_edge.bundle import Manifest, StageSpec, load_manifest
from vrex_edge.export.onnx_io import ort_session


class BundleRunner:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.m: Manifest = load_manifest(root)
        self._sessions: dict[str, object] = {}

    def run(self, stage: StageSpec, **feeds: np.ndarray) -> list[np.ndarray]:
        sess = self._sessions.get(stage.file)
        if sess is None:
            sess = self._sessions[stage.file] = ort_session(self.root / stage.file)
        return sess.run([t.name for t in stage.outputs], feeds)  # type: ignore[attr-defined]

    def rope(self, x: np.ndarray, pos: np.ndarray) -> np.ndarray:
        """x [heads, n, hd] rotated (HF rotate_half convention) at positions pos [n]."""
        r = self.m.text.rope
        freqs = pos[:, None].astype(np.float64) * np.asarray(r.inv_freq)[None, :]  # [n, hd/2]
        emb = np.concatenate([freqs, freqs], axis=-1)  # [n, hd]
        cos, sin = np.cos(emb) * r.attention_scaling, np.sin(emb) * r.attention_scaling
        half = x.shape[-1] // 2
        rot = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
        return (x * cos + rot * sin).astype(np.float32)

    def logits(self, input_ids: np.ndarray, frame_embeds: np.ndarray | None = None) -> np.ndarray:
        """Causal forward over the whole sequence; frame_embeds [K, D] replace placeholder tokens."""
        s, t = self.m.stages, self.m.text
        ids = np.minimum(input_ids, t.vocab_size - 1).astype(np.int64)  # a placeholder may lie past the vocab
        (h,) = self.run(s.embed, input_ids=ids)  # [n, D]
        if frame_embeds is not None:
            h[input_ids == self.m.tokens.frame_placeholder] = frame_embeds
        n = len(input_ids)
        pos = np.arange(n)
        group = t.num_heads // t.num_kv_heads
        mask = np.triu(np.full((n, n), -np.inf, dtype=np.float32), 1)
        for layer in s.layers:
            q, k, v = self.run(layer.pre, hidden=h)  # [H, n, hd], [KVH, n, hd], [KVH, n, hd]
            q, k = self.rope(q, pos), self.rope(k, pos)
            k, v = np.repeat(k, group, axis=0), np.repeat(v, group, axis=0)  # [H, n, hd]
            scores = q @ k.transpose(0, 2, 1) / np.sqrt(t.head_dim) + mask  # [H, n, n]
            p = np.exp(scores - scores.max(-1, keepdims=True))
            p /= p.sum(-1, keepdims=True)
            attn = (p @ v).transpose(1, 0, 2).reshape(n, -1)  # [n, H*hd]
            (h,) = self.run(layer.post, hidden=h, attn=attn.astype(np.float32))
        (logits,) = self.run(s.head, hidden=h)
        return logits  # [n, V]
