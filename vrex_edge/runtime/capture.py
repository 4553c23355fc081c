"""Frame sources: anything that yields (t_seconds, frame_bgr) pairs, and a video-file source.

Resampling to the model's rate is by timestamps (a source's reported fps and frame count are
often wrong). Live sources (cameras, RTSP) will implement the same `FrameSource` protocol with
a capture thread; `Resampler` is shared by all of them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from vrex_edge.errors import ConfigError, SourceError
from vrex_edge.outputs import clock

Frame = tuple[float, np.ndarray]  # (t seconds, frame_bgr [h, w, 3] uint8)


class FrameSource(Protocol):
    """Yields (t, frame_bgr) in increasing t; `close` releases the device/file."""

    def __iter__(self) -> Iterator[Frame]: ...

    def close(self) -> None: ...


class Resampler:
    """Keeps the first frame at or after each tick of a 1/fps grid anchored at the first frame.

    A frame is kept when its time reaches the next tick; ticks it jumps over are skipped (a
    source slower than `fps` passes every frame through)."""

    def __init__(self, fps: float | None, *, tolerance: float = 1e-3):
        if fps is not None and not (fps > 0 and np.isfinite(fps)):
            raise ConfigError(f"fps must be a positive number, got {fps}")
        self.step = None if fps is None else 1.0 / fps
        self._next: float | None = None
        # a frame this fraction of a step early still counts (float noise; capture jitter when live)
        self._tol = 1e-6 if self.step is None else self.step * tolerance

    def keep(self, t: float) -> bool:
        if self.step is None:
            return True
        if self._next is None:
            self._next = t
        if t + self._tol < self._next:
            return False
        ticks = np.floor((t + self._tol - self._next) / self.step) + 1  # ticks covered by this frame
        self._next += float(ticks) * self.step
        return True


@dataclass(frozen=True)
class Incomplete:
    """How far a video decoded when it ended before the frames its container states."""

    path: str
    frames: int  # frames decoded
    last_t: float  # stream time of the last decoded frame (s)
    stated_frames: int
    stated_duration: float  # s

    def message(self) -> str:
        return (
            f"{self.path} decoded {self.frames} of the {self.stated_frames} frames its container states "
            f"(the last at {clock(self.last_t)} of {clock(self.stated_duration)}): the file is truncated or damaged"
        )


@dataclass(frozen=True)
class VideoInfo:
    path: str
    fps: float  # as reported by the container (may be 0 or wrong)
    frame_count: int  # as reported (may be 0 or wrong)
    width: int
    height: int

    @property
    def duration(self) -> float:
        return self.frame_count / self.fps if self.fps > 0 else 0.0

    def sampled_frames(self, fps: float) -> int | None:
        """Frames a 1/fps grid from the first frame keeps, by the stated count and rate (None: unknown)."""
        if self.frame_count <= 0 or not 0 < self.fps < 1000:
            return None
        last = (self.frame_count - 1) / self.fps  # the last frame's time
        return int(np.floor(last * fps + 1e-3)) + 1


class VideoFileSource:
    """Decode a video file with OpenCV, resampled to `fps` by the frames' timestamps.

    fps None keeps every frame. Timestamps start at 0 for the first frame and come from the
    container (CAP_PROP_POS_MSEC), falling back to index / reported fps when it has none.
    After a full pass, `incomplete` says how far decoding went when the file ended early (a
    truncated or damaged file decodes partly), else it is None."""

    def __init__(self, path: str | os.PathLike[str], *, fps: float | None = 2.0, max_frames: int | None = None):
        self.path = Path(path)
        self.fps = fps
        self.max_frames = max_frames
        Resampler(fps)  # validate fps now, not at the first frame
        if not self.path.exists():
            raise SourceError(f"video not found: {self.path}")
        if not self.path.is_file():
            raise SourceError(f"not a video file: {self.path}")
        cap = self._open()
        try:
            self.info = VideoInfo(
                str(self.path),
                float(cap.get(cv2.CAP_PROP_FPS) or 0.0),
                int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0),
                int(cap.get(cv2.CAP_PROP_FRAME_WIDTH) or 0),
                int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0),
            )
        finally:
            cap.release()
        self._cap: cv2.VideoCapture | None = None
        self.incomplete: Incomplete | None = None

    def _open(self) -> cv2.VideoCapture:
        # FFmpeg would print its own diagnostics on stderr next to our one-line error; the user can
        # still turn them on by setting the variable.
        os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
        cap = cv2.VideoCapture(str(self.path))
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"cannot open {self.path} as a video (not a video, or a codec OpenCV lacks)")
        return cap

    def __iter__(self) -> Iterator[Frame]:
        self.close()
        cap = self._cap = self._open()
        resampler = Resampler(self.fps)
        native = self.info.fps if 0 < self.info.fps < 1000 else 0.0
        index = emitted = 0
        t_first: float | None = None
        last_t = -np.inf
        ended = False  # the file ran out (not max_frames, not the consumer)
        self.incomplete = None
        try:
            while self.max_frames is None or emitted < self.max_frames:
                if not cap.grab():
                    ended = True
                    break
                t = cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0  # this frame's presentation time
                if index > 0 and t <= last_t:  # a container without usable timestamps
                    t = max(index / native, last_t + 1e-6) if native else last_t + 1e-3
                if t_first is None:
                    t_first = t
                index += 1
                last_t = t
                if not resampler.keep(t - t_first):
                    continue
                ok, frame = cap.retrieve()
                if not ok or frame is None:
                    ended = True
                    break
                emitted += 1
                yield round(t - t_first, 6), frame
        finally:
            self.close()
        if index == 0:
            raise SourceError(f"no frames could be decoded from {self.path} (empty, truncated, or not a video)")
        stated = self.info.frame_count
        if ended and stated - index > max(2, stated // 500):  # stated counts may be estimates: a little slack
            self.incomplete = Incomplete(str(self.path), index, last_t - (t_first or 0.0), stated, self.info.duration)

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


def open_video(
    path: str | os.PathLike[str], *, fps: float | None = 2.0, max_frames: int | None = None
) -> VideoFileSource:
    """A FrameSource over a video file (raises SourceError for a missing or unreadable file)."""
    return VideoFileSource(path, fps=fps, max_frames=max_frames)
