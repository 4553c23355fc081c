"""Drawing the world: a cluttered static background, per-frame noise, the objects; mp4 writing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from vrex_edge.errors import SourceError
from vrex_edge.world.sim import CANVAS, FPS, ObjState, Stream

BGR = {
    "red": (40, 40, 225),
    "green": (40, 200, 60),
    "blue": (235, 100, 30),
    "yellow": (30, 225, 235),
    "purple": (205, 50, 175),
}


def background(seed: int, size: int = CANVAS) -> np.ndarray:
    """Static clutter: a muted base, low-saturation blobs, lines and boxes. -> [H, W, 3] uint8 BGR."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(45, 110)
    img = np.full((size, size, 3), base, np.float32)
    img += rng.uniform(-12, 12, size=3).astype(np.float32)  # a tint
    for _ in range(int(rng.integers(25, 55))):
        grey = float(rng.uniform(base - 35, base + 35))
        col = tuple(float(np.clip(grey + rng.uniform(-12, 12), 0, 255)) for _ in range(3))
        kind = rng.integers(3)
        p = rng.integers(0, size, size=2)
        if kind == 0:
            q = rng.integers(0, size, size=2)
            cv2.line(img, tuple(int(v) for v in p), tuple(int(v) for v in q), col, int(rng.integers(1, 3)), cv2.LINE_AA)
        elif kind == 1:
            cv2.circle(img, tuple(int(v) for v in p), int(rng.integers(3, 18)), col, -1, cv2.LINE_AA)
        else:
            q = p + rng.integers(4, 24, size=2)
            cv2.rectangle(img, tuple(int(v) for v in p), tuple(int(v) for v in q), col, -1)
    img = cv2.GaussianBlur(img, (0, 0), float(rng.uniform(0.6, 1.5)))
    img += rng.normal(0, 4, img.shape).astype(np.float32)  # static grain
    return np.clip(img, 0, 255).astype(np.uint8)


def draw_object(img: np.ndarray, o: ObjState) -> None:
    """Draw one object onto img [H, W, 3] uint8 BGR in place (OpenCV clips at the borders)."""
    s = 8  # subpixel bits for smooth motion
    f = 1 << s
    r, cx, cy = o.radius, o.x, o.y
    col = BGR[o.color]
    if o.shape == "circle":
        cv2.circle(img, (round(cx * f), round(cy * f)), round(r * f), col, -1, cv2.LINE_AA, s)
        return
    if o.shape == "square":
        pts = [(cx - r, cy - r), (cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    elif o.shape == "triangle":
        pts = [(cx, cy - r * 1.15), (cx + r * 1.1, cy + r * 0.85), (cx - r * 1.1, cy + r * 0.85)]
    else:  # cross
        a, b = r, r * 0.38
        pts = [
            (cx - b, cy - a),
            (cx + b, cy - a),
            (cx + b, cy - b),
            (cx + a, cy - b),
            (cx + a, cy + b),
            (cx + b, cy + b),
            (cx + b, cy + a),
            (cx - b, cy + a),
            (cx - b, cy + b),
            (cx - a, cy + b),
            (cx - a, cy - b),
            (cx - b, cy - b),
        ]
    poly = np.array([[round(x * f), round(y * f)] for x, y in pts], np.int32)
    cv2.fillPoly(img, [poly], col, cv2.LINE_AA, s)


def frames(stream: Stream, *, noise: float = 7.0) -> Iterator[np.ndarray]:
    """Yield the stream's frames, [CANVAS, CANVAS, 3] uint8 BGR, deterministic per stream seed."""
    bg = background(stream.background)
    rng = np.random.default_rng(stream.background + 1)
    bank = rng.normal(0, noise, size=(8, CANVAS * 2, CANVAS * 2, 3)).astype(np.float32)  # noise tiles
    light = np.cumsum(rng.normal(0, 1.0, size=stream.n_frames))  # slow brightness drift
    light = 6.0 * np.tanh(light / 8.0)
    for t, state in enumerate(stream.states):
        img = bg.copy()
        for o in state:
            draw_object(img, o)
        i, dy, dx = rng.integers(8), rng.integers(CANVAS), rng.integers(CANVAS)
        n = bank[i, dy : dy + CANVAS, dx : dx + CANVAS]  # [H, W, 3]
        yield np.clip(img.astype(np.float32) + n + light[t], 0, 255).astype(np.uint8)


def render(stream: Stream, **kw: float) -> np.ndarray:
    """All frames -> [N, H, W, 3] uint8 BGR."""
    return np.stack(list(frames(stream, **kw)))


def write_mp4(path: str | Path, video: Iterator[np.ndarray] | np.ndarray, *, fps: float = FPS) -> None:
    """Write BGR frames as mp4 (fourcc 'mp4v', the one OpenCV writes here)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = None
    try:
        for img in video:
            if writer is None:
                h, w = img.shape[:2]
                writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
                if not writer.isOpened():
                    raise SourceError(f"cannot write video {path}: OpenCV has no mp4v encoder here")
            writer.write(img)
    finally:
        if writer is not None:
            writer.release()


def read_video(path: str | Path) -> np.ndarray:
    """Decode every frame of a video -> [N, H, W, 3] uint8 BGR."""
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise SourceError(f"cannot open video {path}")
    out = []
    while True:
        ok, img = cap.read()
        if not ok:
            break
        out.append(img)
    cap.release()
    if not out:
        raise SourceError(f"no frames decoded from {path}")
    return np.stack(out)
