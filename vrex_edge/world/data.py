"""Training batches generated on the fly: streams of varied length, rendered, laid out as tokens."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from vrex_edge.world.language import Vocab, sample_questions
from vrex_edge.world.layout import build_layout, preprocess
from vrex_edge.world.model import IMAGE_SIZE, MAX_POSITIONS
from vrex_edge.world.render import render
from vrex_edge.world.sim import CANVAS, COLORS, SHAPES, SIZES, Stream, simulate

AUX_CLASSES = 1 + len(COLORS) * len(SHAPES) * 2

TRAIN_SEED_BASE = 1_000_000  # training streams use seeds >= this; held-out evaluation uses seeds below


@dataclass(frozen=True)
class Batch:
    frames: np.ndarray  # [F, S, S, 3] uint8 RGB, streams concatenated in batch order
    input_ids: np.ndarray  # [B, L] int64 (padded with pad id)
    labels: np.ndarray  # [B, L] int64
    kinds: np.ndarray  # [B, L] int8
    offsets: np.ndarray  # [B] int64 first position id of each stream
    aux_cls: np.ndarray  # [F, 9] int64 object class per 3x3 cell (0 empty), training-only targets
    aux_off: np.ndarray  # [F, 9, 2] float32 object centre offset within its cell, in [-1, 1]
    aux_count: np.ndarray  # [F] int64 objects (partly) visible


def aux_targets(stream: Stream) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-frame dense targets for the frame tokens: which object is in each 3x3 cell, where."""
    n = stream.n_frames
    cls = np.zeros((n, 9), np.int64)
    off = np.zeros((n, 9, 2), np.float32)
    count = np.zeros(n, np.int64)
    third = CANVAS / 3.0
    for t, state in enumerate(stream.states):
        for o in state:
            r = o.radius
            if not (-r < o.x < CANVAS + r and -r < o.y < CANVAS + r):
                continue
            count[t] += 1
            if not (0 <= o.x < CANVAS and 0 <= o.y < CANVAS):
                continue
            cy, cx = int(o.y // third), int(o.x // third)
            c = cy * 3 + cx
            cls[t, c] = 1 + (COLORS.index(o.color) * len(SHAPES) + SHAPES.index(o.shape)) * 2 + (o.size == "big")
            off[t, c] = ((o.x - (cx + 0.5) * third) / (third / 2), (o.y - (cy + 0.5) * third) / (third / 2))
    return cls, off, np.minimum(count, 4)


def _augment(bgr: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Codec-like damage on some streams (JPEG at a random quality), so mp4 input looks familiar."""
    if rng.random() < 0.5:
        return bgr
    q = int(rng.integers(40, 95))
    out = np.empty_like(bgr)
    for i, img in enumerate(bgr):
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, q])
        out[i] = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    return out


def corrupt_names(ids: np.ndarray, kinds: np.ndarray, vocab: Vocab, rng: np.random.Generator, p: float) -> np.ndarray:
    """Replace a fraction `p` of the shape and size words of narrations in the INPUT by another one
    (labels untouched). Teacher forcing otherwise teaches the model to copy an object's name from
    its earlier narration; with noisy history it learns to name what it sees. ids [L] -> [L]."""
    out = ids.copy()
    for group in (SHAPES, tuple(SIZES)):
        gids = np.array([vocab[w] for w in group])
        pos = np.flatnonzero((kinds == 2) & np.isin(ids, gids))
        pos = pos[rng.random(len(pos)) < p]
        for i in pos:
            out[i] = rng.choice(gids[gids != ids[i]])
    return out


def make_batch(
    rng: np.random.Generator,
    vocab: Vocab,
    *,
    tokens: int,
    min_s: float,
    max_s: float,
    offset_p: float = 0.5,
    name_noise: float = 0.0,
) -> Batch:
    if rng.random() < 0.4:
        dur = float(rng.uniform(min_s, min(max_s, 180.0)))
    else:
        dur = float(rng.uniform(min(180.0, max_s), max_s))
    b = max(1, int(tokens // (dur * 2 * 12)))
    frames, layouts, aux = [], [], []
    for _ in range(b):
        seed = int(rng.integers(TRAIN_SEED_BASE, 2**31 - 1))
        stream = simulate(seed, dur * float(rng.uniform(0.85, 1.0)))
        bgr = _augment(render(stream), rng)
        interp = cv2.INTER_AREA if rng.random() < 0.7 else cv2.INTER_LINEAR
        frames.append(preprocess(bgr, IMAGE_SIZE, interp=interp))
        qs = sample_questions(stream, rng, every_s=float(rng.uniform(10, 30)))
        layouts.append(build_layout(stream, qs, vocab))
        aux.append(aux_targets(stream))
    n = max(len(lay.input_ids) for lay in layouts)
    ids = np.full((b, n), vocab["<pad>"], np.int64)
    labels = np.full((b, n), -100, np.int64)
    kinds = np.zeros((b, n), np.int8)
    offsets = np.zeros(b, np.int64)
    for i, lay in enumerate(layouts):
        k = len(lay.input_ids)
        ids[i, :k], labels[i, :k], kinds[i, :k] = lay.input_ids, lay.labels, lay.kinds
        if name_noise > 0:
            ids[i, :k] = corrupt_names(lay.input_ids, lay.kinds, vocab, rng, name_noise)
        if rng.random() < offset_p:
            offsets[i] = rng.integers(0, MAX_POSITIONS - n)
    return Batch(
        np.concatenate(frames), ids, labels, kinds, offsets, *(np.concatenate([a[i] for a in aux]) for i in range(3))
    )
