"""Video-file frame source: timestamp resampling and one-line SourceErrors."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from vrex_edge.errors import ConfigError, SourceError
from vrex_edge.runtime.capture import Resampler, open_video


def _write_mp4(path: Path, *, fps: float = 10.0, frames: int = 30, size: tuple[int, int] = (64, 48)) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    assert writer.isOpened()
    for i in range(frames):
        img = np.zeros((size[1], size[0], 3), np.uint8)
        img[:, : 2 * i + 2] = (40, 120, 200)  # a bar that grows frame by frame
        writer.write(img)
    writer.release()
    return path


@pytest.fixture(scope="module")
def mp4(tmp_path_factory) -> Path:
    return _write_mp4(tmp_path_factory.mktemp("video") / "clip.mp4")


def test_resampled_to_2fps_by_timestamps(mp4):
    src = open_video(mp4, fps=2)
    assert (src.info.width, src.info.height) == (64, 48) and src.info.fps == pytest.approx(10)
    got = list(src)
    assert [t for t, _ in got] == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0, 2.5])
    frame = got[1][1]
    assert frame.shape == (48, 64, 3) and frame.dtype == np.uint8
    assert (np.abs(frame[:, :11].astype(int) - (40, 120, 200)).max()) < 40  # frame 5: bar 12 px wide
    assert frame[:, 14:].max() < 40
    assert [t for t, _ in src] == [t for t, _ in got]  # iterable again from the start


def test_fps_not_a_divisor_and_every_frame(mp4):
    assert [t for t, _ in open_video(mp4, fps=3)] == pytest.approx([0, 0.4, 0.7, 1.0, 1.4, 1.7, 2.0, 2.4, 2.7])
    assert len(list(open_video(mp4, fps=None))) == 30
    assert len(list(open_video(mp4, fps=30))) == 30  # a slower source passes every frame
    assert [t for t, _ in open_video(mp4, fps=1, max_frames=2)] == pytest.approx([0.0, 1.0])


def test_resampler_with_jittered_timestamps():
    rng = np.random.default_rng(0)
    ts = np.arange(0, 10, 1 / 30) + 1.5 + rng.uniform(-0.004, 0.004, 300)  # a 30 fps camera, late start
    r = Resampler(2.0)
    kept = [t for t in ts if r.keep(float(t))]
    assert len(kept) == 20
    assert np.all(np.abs(np.diff(kept) - 0.5) < 1 / 30 + 0.01)


def test_missing_file(tmp_path):
    with pytest.raises(SourceError, match="video not found"):
        open_video(tmp_path / "nope.mp4")


def test_not_a_video(tmp_path):
    bad = tmp_path / "notes.mp4"
    bad.write_text("this is not a video\n")
    with pytest.raises(SourceError, match="cannot open") as e:
        list(open_video(bad))
    assert "\n" not in str(e.value)
    with pytest.raises(SourceError, match="not a video file"):
        open_video(tmp_path)


def test_bad_fps(mp4):
    with pytest.raises(ConfigError, match="fps"):
        open_video(mp4, fps=0)


def test_video_without_frames(mp4, monkeypatch):
    import vrex_edge.runtime.capture as capture

    class NoFrames:  # a container OpenCV opens but cannot decode a frame from
        def __init__(self, path):
            pass

        def isOpened(self):
            return True

        def get(self, prop):
            return 0.0

        def grab(self):
            return False

        def release(self):
            pass

    monkeypatch.setattr(capture.cv2, "VideoCapture", NoFrames)
    with pytest.raises(SourceError, match="no frames could be decoded"):
        list(open_video(mp4))
