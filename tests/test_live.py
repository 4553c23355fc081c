"""Live capture without a camera: synthetic readers faster and slower than the model, a file
played in real time, a source that fails mid-stream, and the CLI under a pseudo-terminal."""

from __future__ import annotations

import queue
import shutil
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.terminal import answers, ask_until_done, spawn_cli
from vrex_edge.runtime.events import Answer, FrameProcessed
from vrex_edge.runtime.live import CaptureThread, LiveStatus, OpenCVReader, live_events


class SyntheticReader:
    """Frames at `rate` fps whose first pixel holds the frame number; optional failure window."""

    def __init__(
        self,
        rate: float,
        *,
        count: int | None = None,
        fail_after: int | None = None,
        fail_reads: int = 0,
        recover: bool = True,
    ):
        self.name, self.ended = "synthetic", False
        self.period, self.count = 1.0 / rate, count
        self.index = 0
        self.fail_after, self.fail_reads, self.recover = fail_after, fail_reads, recover
        self.failing = 0
        self.reopens = 0

    def read(self) -> np.ndarray | None:
        time.sleep(self.period)
        if self.fail_after is not None and self.index == self.fail_after and self.failing < self.fail_reads:
            self.failing += 1
            return None
        if self.count is not None and self.index >= self.count:
            self.ended = True
            return None
        frame = np.zeros((8, 8, 3), np.uint8)
        frame[0, 0, 0], frame[0, 0, 1] = self.index % 256, self.index // 256
        self.index += 1
        return frame

    def reopen(self) -> bool:
        self.reopens += 1
        if not self.recover:
            return False
        self.failing = self.fail_reads  # the device is back
        return True

    def close(self) -> None:
        pass


def frame_number(frame: np.ndarray) -> int:
    return int(frame[0, 0, 0]) + 256 * int(frame[0, 0, 1])


def drain(capture: CaptureThread, *, work_s: float, limit_s: float = 10.0) -> list[tuple[float, int]]:
    got, start = [], time.monotonic()
    while not capture.done and time.monotonic() - start < limit_s:
        item = capture.get(timeout=0.05)
        if item is not None:
            assert len(capture._frames) <= capture._frames.maxlen
            got.append((item[0], frame_number(item[1])))
            time.sleep(work_s)  # the model's time per frame
    return got


def test_slow_model_drops_oldest_and_stays_current() -> None:
    capture = CaptureThread(SyntheticReader(100, count=150), fps=None, queue_size=1).start()
    got = drain(capture, work_s=0.1)
    capture.stop()
    status = capture.status()
    numbers = [n for _, n in got]
    assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)
    assert status.dropped > 0 and status.sampled == status.captured == 150
    assert len(got) + status.dropped == status.sampled
    assert numbers[-1] >= 140, "the last frame the model saw is near the newest one"
    times = [t for t, _ in got]
    assert times == sorted(times)


def test_fast_model_gets_every_sampled_frame_in_order() -> None:
    capture = CaptureThread(SyntheticReader(40, count=40), fps=10, queue_size=2).start()
    got = drain(capture, work_s=0.0)
    capture.stop()
    status = capture.status()
    assert status.dropped == 0 and status.state == "ended"
    assert len(got) == status.sampled and 8 <= status.sampled <= 12  # 40 frames at 40 fps sampled at 10 fps
    gaps = np.diff([t for t, _ in got])
    assert (gaps >= 0.075).all()  # 10 fps sampling, tolerant of capture jitter


def test_source_that_stalls_then_resumes() -> None:
    reader = SyntheticReader(100, count=60, fail_after=20, fail_reads=3)
    capture = CaptureThread(reader, fps=None, queue_size=64, retry_s=2.0, backoff=(0.01, 0.05)).start()
    got = drain(capture, work_s=0.0)
    capture.stop()
    assert reader.reopens >= 1
    assert capture.status().state == "ended"
    assert [n for _, n in got][-1] == 59


def test_source_that_dies_fails_cleanly() -> None:
    reader = SyntheticReader(100, fail_after=5, fail_reads=10**6, recover=False)
    capture = CaptureThread(reader, fps=None, queue_size=8, retry_s=0.3, backoff=(0.01, 0.05)).start()
    got = drain(capture, work_s=0.0, limit_s=5)
    status = capture.status()
    capture.stop()
    assert status.state == "failed" and "stopped delivering" in status.message
    assert len(got) == 5 and reader.reopens >= 2


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("live") / "clip.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (64, 48))
    for i in range(60):
        frame = np.full((48, 64, 3), 50, np.uint8)
        cv2.rectangle(frame, (i, 10), (i + 10, 20), (255, 0, 0), -1)
        writer.write(frame)
    writer.release()
    return path


def test_file_plays_in_real_time(clip: Path) -> None:
    reader = OpenCVReader(str(clip), paced=True)
    start = time.monotonic()
    capture = CaptureThread(reader, fps=2, queue_size=4).start()
    got = drain(capture, work_s=0.0)
    elapsed = time.monotonic() - start
    capture.stop()
    assert capture.status().state == "ended" and capture.status().captured == 60
    assert 5.0 <= elapsed < 9.0, elapsed  # 60 frames at 10 fps
    assert len(got) == 12 and all(abs(t - 0.5 * i) < 0.25 for i, (t, _) in enumerate(got))


def test_live_events_insert_questions(tiny_videollm_bundle: Path) -> None:
    from vrex_edge.runtime.engine import load_model
    from vrex_edge.runtime.session import StreamSession

    session = StreamSession(load_model(tiny_videollm_bundle), policy="full", speak_threshold=0.0)
    capture = CaptureThread(SyntheticReader(20, count=30), fps=5).start()
    questions: queue.Queue[str] = queue.Queue()
    events = []
    for event in live_events(session, capture, questions, stop=threading.Event()):
        events.append(event)
        if isinstance(event, FrameProcessed) and event.index == 2:
            questions.put("what is here")
    capture.stop()
    answers = [e for e in events if isinstance(e, Answer)]
    frames = [e for e in events if isinstance(e, FrameProcessed)]
    assert len(answers) == 1 and answers[0].question == "what is here"
    assert answers[0].t >= frames[2].t
    assert isinstance(events[-1], LiveStatus) and events[-1].capture.state == "ended"
    assert [f.t for f in frames] == sorted(f.t for f in frames)


@pytest.mark.skipif(shutil.which("vrex-edge") is None, reason="console script not installed")
def test_cli_under_a_terminal_answers_a_typed_question(clip: Path, tiny_videollm_bundle: Path, tmp_path: Path) -> None:
    pytest.importorskip("pexpect")
    out = tmp_path / "session.jsonl"
    child = spawn_cli(
        ["live", "--source", str(clip), "--model", str(tiny_videollm_bundle), "--policy", "full", "-o", str(out)]
    )
    ask_until_done(child, "where is it")
    assert answers(out, "where is it")
