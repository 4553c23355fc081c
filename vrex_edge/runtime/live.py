"""Live capture: a thread owns the device and hands the newest frames to the model.

    reader (camera / stream / paced file) -> CaptureThread (sampling at --fps, bounded queue,
    drop-oldest, retry with backoff) -> live_events (questions + StreamSession) -> events

Timestamps are capture times (seconds since the capture started), so narration reports when
something was seen, not when the model got to it; the gap is the end-to-end lag.
"""

from __future__ import annotations

import collections
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np

from vrex_edge.errors import SourceError
from vrex_edge.runtime.capture import Incomplete, Resampler

Clock = Callable[[], float]


class FrameReader(Protocol):
    """A device the capture thread polls. `read` blocks for the next frame; None means the read
    failed (the thread retries); `ended` turns true at a file's end (not a failure)."""

    name: str
    ended: bool

    def read(self) -> np.ndarray | None: ...

    def reopen(self) -> bool: ...

    def close(self) -> None: ...


def _quiet_ffmpeg() -> None:
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    os.environ.setdefault("OPENCV_LOG_LEVEL", "OFF")


class OpenCVReader:
    """A camera index, a V4L2 device path, an RTSP/HTTP URL, or (paced=True) a file played at its
    own frame rate."""

    def __init__(self, target: int | str, *, paced: bool = False, clock: Clock = time.monotonic):
        self.target, self.paced, self.clock = target, paced, clock
        self.name = f"camera {target}" if isinstance(target, int) else str(target)
        self.ended = False
        _quiet_ffmpeg()
        self.cap = self._open()
        if self.cap is None:
            raise SourceError(self._hint())
        fps = float(self.cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self.period = 1.0 / fps if paced and 0 < fps < 1000 else 0.0
        self._next_due: float | None = None
        # a file: the frames its container states, and how far it decoded (Incomplete when it ends early)
        self.stated = int(self.cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0) if self._is_file() else 0
        self.stated_duration = self.stated / fps if 0 < fps < 1000 else 0.0
        self.decoded = 0
        self._first_ms: float | None = None
        self._last_ms = 0.0

    def _is_file(self) -> bool:
        return self.paced or (not isinstance(self.target, int) and "://" not in str(self.target))

    def _hint(self) -> str:
        if isinstance(self.target, int):
            return (
                f"cannot open camera {self.target}: no such device or no permission "
                f"(check /dev/video{self.target} and the video group, or use --source FILE_OR_URL)"
            )
        if "://" in str(self.target):
            return f"cannot open stream {self.target} (unreachable, or a protocol/codec OpenCV lacks)"
        if not os.path.exists(str(self.target)):
            return f"source not found: {self.target}"
        return f"cannot open {self.target} as a video (not a video, or a codec OpenCV lacks)"

    def _open(self) -> cv2.VideoCapture | None:
        previous = cv2.utils.logging.getLogLevel()
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)  # our error says it in one line
        try:
            cap = cv2.VideoCapture(self.target)
        finally:
            cv2.utils.logging.setLogLevel(previous)
        if not cap.isOpened():
            cap.release()
            return None
        return cap

    def read(self) -> np.ndarray | None:
        if self.cap is None:
            return None
        if self.period:  # play a file in real time
            now = self.clock()
            self._next_due = now if self._next_due is None else self._next_due
            if self._next_due > now:
                time.sleep(self._next_due - now)
            self._next_due += self.period
        ok, frame = self.cap.read()
        if not ok or frame is None:
            if self.period or self._is_file():
                self.ended = True  # end of a file
            return None
        self.decoded += 1
        self._last_ms = float(self.cap.get(cv2.CAP_PROP_POS_MSEC) or 0.0)
        if self._first_ms is None:
            self._first_ms = self._last_ms
        return frame

    @property
    def incomplete(self) -> Incomplete | None:
        """After a file ended: how far it decoded, when that was short of the frames its container
        states (a truncated or damaged file); else None. The slack is caption's (capture.py)."""
        if not self.ended or self.stated <= 0 or self.stated - self.decoded <= max(2, self.stated // 500):
            return None
        last_t = (self._last_ms - (self._first_ms or 0.0)) / 1000.0
        return Incomplete(self.name, self.decoded, last_t, self.stated, self.stated_duration)

    def reopen(self) -> bool:
        self.close()
        self.cap = self._open()
        return self.cap is not None

    def close(self) -> None:
        if self.cap is not None:
            self.cap.release()
            self.cap = None


@dataclass(frozen=True)
class CaptureStatus:
    captured: int  # frames read from the device
    sampled: int  # frames that passed --fps sampling and entered the queue
    dropped: int  # sampled frames discarded because the model was busy (queue full)
    state: str  # running | stalled | ended | failed | stopped
    message: str = ""
    t: float = 0.0  # capture time of the newest frame


class CaptureThread:
    """Reads frames in a background thread into a bounded drop-oldest queue.

    Only frames at least 1/fps apart (capture time) are queued; when the consumer is slower,
    the oldest queued frame is dropped and counted. A failing device is retried with
    exponential backoff for `retry_s` seconds before the thread gives up ("failed").
    """

    def __init__(
        self,
        reader: FrameReader,
        *,
        fps: float | None = 2.0,
        queue_size: int = 1,
        retry_s: float = 10.0,
        backoff: tuple[float, float] = (0.05, 2.0),
        clock: Clock = time.monotonic,
    ):
        if queue_size < 1:
            raise ValueError("queue_size must be >= 1")
        self.reader, self.clock = reader, clock
        self.resampler = Resampler(fps, tolerance=0.1)  # capture clocks jitter by milliseconds
        self.retry_s, self.backoff = retry_s, backoff
        self._frames: collections.deque[tuple[float, np.ndarray]] = collections.deque(maxlen=queue_size)
        self._cv = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="vrex-capture", daemon=True)
        self.captured = self.sampled = self.dropped = 0
        self.state, self.message, self.last_t = "running", "", 0.0
        self.t0: float | None = None

    def start(self) -> CaptureThread:
        self.t0 = self.clock()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)
        self.reader.close()
        with self._cv:
            if self.state in ("running", "stalled"):
                self.state = "stopped"
            self._cv.notify_all()

    def _set(self, state: str, message: str = "") -> None:
        with self._cv:
            self.state, self.message = state, message
            self._cv.notify_all()

    def _recover(self) -> bool:
        """Retry a failed device with backoff; False once retry_s has passed."""
        start, delay = self.clock(), self.backoff[0]
        self._set("stalled", f"{self.reader.name} stopped delivering frames; retrying")
        while not self._stop.is_set() and self.clock() - start < self.retry_s:
            self._stop.wait(delay)
            if self.reader.reopen() and self.reader.read() is not None:
                self._set("running", f"{self.reader.name} resumed")
                return True
            delay = min(delay * 2, self.backoff[1])
        return False

    def _run(self) -> None:
        while not self._stop.is_set():
            frame = self.reader.read()
            if frame is None:
                if self.reader.ended:
                    self._set("ended", f"end of {self.reader.name}")
                    return
                if not self._recover():
                    if not self._stop.is_set():
                        self._set("failed", f"{self.reader.name} stopped delivering frames for {self.retry_s:g} s")
                    return
                continue
            t = self.clock() - (self.t0 or 0.0)
            with self._cv:
                self.captured += 1
                self.last_t = t
                if not self.resampler.keep(t):
                    continue
                self.sampled += 1
                if len(self._frames) == self._frames.maxlen:
                    self.dropped += 1  # deque drops the oldest on append
                self._frames.append((t, frame))
                self._cv.notify_all()

    def get(self, timeout: float) -> tuple[float, np.ndarray] | None:
        """The oldest queued frame (the newest when queue_size is 1), or None after `timeout`."""
        with self._cv:
            if not self._frames and self.state in ("running", "stalled"):
                self._cv.wait(timeout)
            return self._frames.popleft() if self._frames else None

    @property
    def done(self) -> bool:
        with self._cv:
            return self.state in ("ended", "failed", "stopped") and not self._frames

    def status(self) -> CaptureStatus:
        with self._cv:
            return CaptureStatus(self.captured, self.sampled, self.dropped, self.state, self.message, self.last_t)

    def now(self) -> float:
        return self.clock() - (self.t0 or 0.0)


@dataclass(frozen=True)
class LiveStatus:
    """Emitted after every processed frame and on source state changes."""

    capture: CaptureStatus
    processed: int
    elapsed: float  # seconds since capture started
    lag_ms: float | None  # capture -> end of the latest caption/answer


def live_events(
    session,
    capture: CaptureThread,
    questions: queue.Queue[str],
    *,
    stop: threading.Event | None = None,
    poll_s: float = 0.1,
    on_frame: Callable[[float, np.ndarray], None] | None = None,
) -> Iterator[object]:
    """Drive `session` from `capture`, inserting questions typed meanwhile at the current time.

    Yields the session's events interleaved with LiveStatus; returns when the source ends,
    fails, or `stop` is set (then the caller stops the capture thread).
    """
    from vrex_edge.runtime.events import Answer, Caption

    stop = stop or threading.Event()
    session.start()
    processed, lag_ms, state = 0, None, "running"
    while not stop.is_set():
        while True:
            try:
                question = questions.get_nowait()
            except queue.Empty:
                break
            t = capture.now()
            for event in session.ask(question, t):
                if isinstance(event, Answer):
                    lag_ms = (capture.now() - t) * 1000
                yield event
        item = capture.get(timeout=poll_s)
        status = capture.status()
        if item is None:
            if status.state != state:
                state = status.state
                yield LiveStatus(status, processed, capture.now(), lag_ms)
            if capture.done:
                return
            continue
        t_frame, frame = item
        if on_frame is not None:
            on_frame(t_frame, frame)
        for event in session.push_frame(frame, t_frame):
            if isinstance(event, Caption):
                lag_ms = (capture.now() - t_frame) * 1000
            yield event
        processed += 1
        state = status.state
        yield LiveStatus(capture.status(), processed, capture.now(), lag_ms)
