"""The web view's shared state: written by the live loop, read by the HTTP threads.

A publish call takes one short lock, replaces a value and notifies; it never waits on a viewer.
Viewers keep only cursors (the last frame and record they sent) and wait on conditions, so a
slow viewer skips frames instead of queueing them. There is one condition per kind of news, so
a publish call wakes only the viewers that will send something (every wake-up costs the GIL). The
newest frame is JPEG-encoded once, by whichever viewer thread wants it first (OpenCV releases the
GIL while it encodes).
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np


@dataclass(frozen=True)
class Record:
    """A caption (question None) or an answer, numbered from 1 in the order they came."""

    id: int
    t: float
    text: str
    question: str | None

    def json(self) -> dict[str, Any]:
        return {"id": self.id, "t": self.t, "text": self.text, "question": self.question}


@dataclass(frozen=True)
class Jpeg:
    seq: int  # number of the published frame (from 1)
    t: float  # its stream time
    data: bytes


class Hub:
    """Latest frame, the last `history` records, the latest status; conditions to wait on."""

    def __init__(self, *, history: int = 200, jpeg_quality: int = 80, max_side: int = 960):
        self.lock = threading.Lock()
        self._frames = threading.Condition(self.lock)  # notified by frame() and close()
        self._records_cv = threading.Condition(self.lock)  # record() and close()
        self._news = threading.Condition(self.lock)  # record(), update() and close()
        self._closing = threading.Condition(self.lock)  # close()
        self.jpeg_quality, self.max_side = jpeg_quality, max_side
        self.closed = False
        self.frame_seq = 0
        self.frame_t = 0.0
        self._frame: np.ndarray | None = None
        self._records: collections.deque[Record] = collections.deque(maxlen=history)
        self.record_id = 0  # id of the newest record
        self.status_seq = 0
        self._status: dict[str, Any] = {}
        self._encode_lock = threading.Lock()
        self._jpeg: Jpeg | None = None

    # ------------------------------------------------------------------ publisher side

    def frame(self, t: float, bgr: np.ndarray) -> None:
        """Publish a BGR uint8 frame [h, w, 3]. Kept by reference: the caller must not modify it later."""
        with self.lock:
            self.frame_seq += 1
            self.frame_t, self._frame = float(t), bgr
            self._frames.notify_all()

    def record(self, t: float, text: str, question: str | None) -> None:
        with self.lock:
            self.record_id += 1
            self._records.append(Record(self.record_id, float(t), text, question))
            self._records_cv.notify_all()
            self._news.notify_all()

    def update(self, **fields: Any) -> None:
        """Merge JSON-able fields into the status."""
        with self.lock:
            self._status.update(fields)
            self.status_seq += 1
            self._news.notify_all()

    def close(self) -> None:
        with self.lock:
            self.closed = True
            for cv in (self._frames, self._records_cv, self._news, self._closing):
                cv.notify_all()

    # ------------------------------------------------------------------ viewer side

    def wait_frame(self, after: int, timeout: float) -> bool:
        """Wait for a frame newer than seq `after` (or the close); False on timeout."""
        with self.lock:
            return self._frames.wait_for(lambda: self.closed or self.frame_seq > after, timeout)

    def wait_news(self, record_id: int, status_seq: int, status_due: float, timeout: float) -> bool:
        """Wait for a record newer than `record_id`, or a status newer than `status_seq` (or the close);
        before the monotonic time `status_due` only a record wakes the caller, and it returns at
        status_due at the latest. False when nothing came."""
        now = time.monotonic()
        with self.lock:
            if now < status_due:
                return self._records_cv.wait_for(
                    lambda: self.closed or self.record_id > record_id, min(timeout, status_due - now)
                )
            return self._news.wait_for(
                lambda: self.closed or self.record_id > record_id or self.status_seq > status_seq, timeout
            )

    def sleep(self, seconds: float) -> bool:
        """Sleep unless the hub closes first; True if it closed."""
        with self.lock:
            return self._closing.wait_for(lambda: self.closed, seconds)

    def records_after(self, record_id: int) -> list[Record]:
        with self.lock:
            return [r for r in self._records if r.id > record_id]

    def status(self) -> tuple[int, dict[str, Any]]:
        with self.lock:
            return self.status_seq, {**self._status, "frame_t": self.frame_t if self.frame_seq else None}

    def jpeg(self) -> Jpeg | None:
        """The newest frame as JPEG (encoded once per frame, shared by all viewers); None before the first."""
        with self._encode_lock:
            with self.lock:
                seq, t, frame = self.frame_seq, self.frame_t, self._frame
            if frame is None:
                return None
            if self._jpeg is None or self._jpeg.seq != seq:
                self._jpeg = Jpeg(seq, t, self._encode(frame))
            return self._jpeg

    def _encode(self, bgr: np.ndarray) -> bytes:
        h, w = bgr.shape[:2]
        scale = self.max_side / max(h, w)
        if scale < 1:
            bgr = cv2.resize(bgr, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
        ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality])
        if not ok:  # an odd array (wrong dtype or channels): show nothing rather than fail the viewer
            return b""
        return buf.tobytes()


class RateGate:
    """A token bucket: `burst` at once, then one per `every_s` seconds."""

    def __init__(self, burst: int, every_s: float, clock: Callable[[], float] = time.monotonic):
        self.burst, self.every_s, self.clock = burst, every_s, clock
        self._tokens, self._t = float(burst), clock()
        self._lock = threading.Lock()

    def take(self) -> float:
        """0.0 when allowed (one token spent), else the seconds until the next token."""
        with self._lock:
            now = self.clock()
            self._tokens = min(self.burst, self._tokens + (now - self._t) / self.every_s)
            self._t = now
            if self._tokens >= 1:
                self._tokens -= 1
                return 0.0
            return (1 - self._tokens) * self.every_s
