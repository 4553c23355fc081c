"""Does the web view slow the model? Processed fps of the live path with no web view, with the web
view and 0 viewers, and with 20 loopback viewers (some of which stall and vanish), in one run.

The demo video (samples/world_demo.mp4) is decoded once and played in a loop by a capture thread
faster than the model can take it (--rate), so the model is the bottleneck and processed fps is
its throughput. Each phase streams a fresh StreamSession for --seconds through live_events, with
what app.live_stream publishes per event (image, frame + session.stats, record, status). The
viewers live in another process (like browsers): each healthy one reads /stream.mjpg and /events;
each faulty one connects to both, stops reading for 1-4 s and resets the connection, over and over.
Phases alternate (off, 0, 20, off, 0, 20, ...) so drift in the machine's load hits all alike.

    python3 benchmarks/bench_web.py --seconds 12 --rounds 2 --out benchmarks/results/web.md
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import queue
import random
import shlex
import socket
import statistics
import struct
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent


class LoopReader:
    """A FrameReader over frames in memory, played in a loop at `rate` fps for `seconds`."""

    def __init__(self, frames: list[np.ndarray], rate: float, seconds: float):
        self.name, self.ended = "world_demo (looped)", False
        self.frames, self.period, self.seconds = frames, 1.0 / rate, seconds
        self.i, self.t0 = 0, None

    def read(self) -> np.ndarray | None:
        self.t0 = self.t0 or time.monotonic()
        time.sleep(self.period)
        if time.monotonic() - self.t0 >= self.seconds:
            self.ended = True
            return None
        frame = self.frames[self.i % len(self.frames)]
        self.i += 1
        return frame

    def reopen(self) -> bool:
        return False

    def close(self) -> None:
        pass


# ---------------------------------------------------------------------------- viewers (another process)


def _read_stream(port: int, path: str, stop: threading.Event, counts: dict[str, int], key: str, marker: bytes) -> None:
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        tail = b""
        while not stop.is_set():
            chunk = s.recv(1 << 16)
            if not chunk:
                break
            data = tail + chunk
            counts[key] += data.count(marker)
            tail = data[-64:]
        s.close()
    except OSError:
        counts["errors"] += 1


def _faulty(port: int, stop: threading.Event, counts: dict[str, int], rng: random.Random) -> None:
    while not stop.is_set():
        socks = []
        try:
            for path in ("/stream.mjpg", "/events"):
                s = socket.socket()
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                s.connect(("127.0.0.1", port))
                s.sendall(f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
                s.recv(256)  # the response starts...
                socks.append(s)
            stop.wait(rng.uniform(1.0, 4.0))  # ...then the viewer stops reading
        except OSError:
            counts["errors"] += 1
        for s in socks:  # and vanishes without a goodbye (RST)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()
        counts["stalls"] += 1


def viewers(port: int, healthy: int, faulty: int, seconds: float, results: mp.Queue) -> None:
    """Run the viewers for `seconds`; put {frames, records, stalls, errors} (totals) on `results`."""
    stop = threading.Event()
    counts = {"frames": 0, "events": 0, "stalls": 0, "errors": 0}
    threads = []
    for _ in range(healthy):
        threads.append(
            threading.Thread(
                target=_read_stream,
                args=(port, "/stream.mjpg", stop, counts, "frames", b"Content-Type: image/jpeg"),
                daemon=True,
            )
        )
        threads.append(
            threading.Thread(
                target=_read_stream, args=(port, "/events", stop, counts, "events", b"\nevent: "), daemon=True
            )
        )
    for i in range(faulty):
        threads.append(threading.Thread(target=_faulty, args=(port, stop, counts, random.Random(i)), daemon=True))
    for t in threads:
        t.start()
    stop.wait(seconds)
    stop.set()
    results.put(counts)


# ---------------------------------------------------------------------------- one phase


def phase(
    model, frames: list[np.ndarray], *, web: bool, healthy: int, faulty: int, seconds: float, rate: float, policy: str
) -> dict:
    from vrex_edge.runtime.events import Answer, Caption, FrameProcessed
    from vrex_edge.runtime.live import CaptureThread, LiveStatus, live_events
    from vrex_edge.runtime.session import StreamSession
    from vrex_edge.web import WebView, parse_web

    session = StreamSession(model, policy=policy)
    questions: queue.Queue[str] = queue.Queue()
    view = WebView(parse_web("127.0.0.1:0", env={}), questions, title="bench").start() if web else None
    ctx = mp.get_context("spawn")
    results: mp.Queue = ctx.Queue()
    proc = None
    if view is not None and healthy + faulty:
        proc = ctx.Process(target=viewers, args=(view.port, healthy, faulty, seconds + 1.0, results), daemon=True)
        proc.start()
        time.sleep(1.5)  # the viewers are connected before the stream starts
    capture = CaptureThread(LoopReader(frames, rate, seconds), fps=None)
    frame_ms, last, publish_s, publish_cpu = [], None, 0.0, 0.0

    def on_frame(t: float, frame: np.ndarray) -> None:
        nonlocal publish_s, publish_cpu
        t0, c0 = time.perf_counter(), time.thread_time()
        view.image(t, frame)
        publish_s, publish_cpu = publish_s + time.perf_counter() - t0, publish_cpu + time.thread_time() - c0

    cpu0, main0 = time.process_time(), time.thread_time()
    capture.start()
    for event in live_events(session, capture, questions, on_frame=on_frame if view is not None else None):
        t0, c0 = time.perf_counter(), time.thread_time()
        if isinstance(event, FrameProcessed):
            frame_ms.append(event.timings_ms["total"])
            if view is not None:
                view.frame(event, session.stats)
        elif isinstance(event, Caption | Answer) and view is not None:
            view.record(event.t, event.text, getattr(event, "question", None))
        elif isinstance(event, LiveStatus):
            last = event
            if view is not None:
                view.status(event)
        if view is not None:
            publish_s, publish_cpu = publish_s + time.perf_counter() - t0, publish_cpu + time.thread_time() - c0
    capture.stop()
    main_cpu, other_cpu = time.thread_time() - main0, time.process_time() - cpu0 - (time.thread_time() - main0)
    got = {"frames": 0, "events": 0, "stalls": 0, "errors": 0}
    if proc is not None:
        try:
            got = results.get(timeout=10)
        except queue.Empty:
            pass
        proc.join(5)
        if proc.is_alive():
            proc.terminate()
    dropped = view.dropped if view is not None else 0
    close_s = 0.0
    if view is not None:
        t0 = time.monotonic()
        view.close()
        close_s = time.monotonic() - t0
    assert last is not None
    return {
        "fps": last.processed / last.elapsed,
        "frame_ms": statistics.median(frame_ms),
        "processed": last.processed,
        "captured": last.capture.captured,
        "viewer_fps": got["frames"] / max(healthy, 1) / seconds,
        "events": got["events"],
        "stalls": got["stalls"],
        "errors": got["errors"],
        "dropped": dropped,
        "close_s": close_s,
        "publish_ms": 1000 * publish_s / max(last.processed, 1),
        "publish_cpu_ms": 1000 * publish_cpu / max(last.processed, 1),
        "main_cpu": main_cpu / last.elapsed,
        "other_cpu": other_cpu / last.elapsed,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=ROOT / "models" / "vrex-tiny")
    p.add_argument("--video", type=Path, default=ROOT / "samples" / "world_demo.mp4")
    p.add_argument("--seconds", type=float, default=12.0, help="length of each phase")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--viewers", type=int, default=20, help="viewers in the loaded phase")
    p.add_argument("--faulty", type=int, default=6, help="of which this many stall and vanish, repeatedly")
    p.add_argument("--rate", type=float, default=100.0, help="capture rate (fps), above what the model takes")
    p.add_argument("--size", type=int, default=480, help="frames are resized to size x size (the demo is 128x128)")
    p.add_argument("--threads", type=int, default=1, help="onnxruntime threads")
    p.add_argument("--policy", default="resv")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    if not 0 <= args.faulty <= args.viewers or args.rounds < 1 or args.seconds <= 0:
        p.error("need 0 <= --faulty <= --viewers, --rounds >= 1, --seconds > 0")

    from vrex_edge.runtime.engine import load_model

    cap = cv2.VideoCapture(str(args.video))
    frames = []
    while (ok_frame := cap.read())[0]:
        frames.append(cv2.resize(ok_frame[1], (args.size, args.size), interpolation=cv2.INTER_NEAREST))
    cap.release()
    jpeg_kb = len(cv2.imencode(".jpg", frames[len(frames) // 2], [cv2.IMWRITE_JPEG_QUALITY, 80])[1]) / 1024
    model = load_model(args.model, threads=args.threads)
    conditions = [
        ("no web view", False, 0, 0),
        ("web view, 0 viewers", True, 0, 0),
        (
            f"web view, {args.viewers} viewers ({args.faulty} stall and vanish)",
            True,
            args.viewers - args.faulty,
            args.faulty,
        ),
    ]
    rows: list[tuple[str, int, dict]] = []
    load0 = os.getloadavg()[0]
    for r in range(args.rounds):
        for name, web, healthy, faulty in (
            conditions[r % 3 :] + conditions[: r % 3]
        ):  # rotated: no condition always last
            res = phase(
                model,
                frames,
                web=web,
                healthy=healthy,
                faulty=faulty,
                seconds=args.seconds,
                rate=args.rate,
                policy=args.policy,
            )
            rows.append((name, r + 1, res))
            print(f"round {r + 1} {name}: {res['fps']:.1f} fps", file=sys.stderr)
    order = {name: i for i, (name, *_) in enumerate(conditions)}
    rows.sort(key=lambda row: (row[1], order[row[0]]))

    lines = [
        f"Processed fps of the live path (live_events + CaptureThread + WebView) on {args.video.name} looped at "
        f"{args.rate:g} fps, frames {args.size}x{args.size} (JPEG ~{jpeg_kb:.0f} KB), {args.model.name}, "
        f"policy {args.policy}, {args.threads} onnxruntime thread(s), {args.seconds:g} s per phase, phases "
        f"alternating over {args.rounds} rounds. {platform.machine()}, {os.cpu_count()} cores (shared; load "
        f"average {load0:.1f} at the start). Viewers run in another process on loopback; healthy ones read "
        "/stream.mjpg and /events, faulty ones connect to both, stop reading for 1-4 s, reset, and reconnect.",
        "",
        "| condition | round | processed fps | frame ms (median) | publish ms per frame (model thread: wall / CPU) "
        "| CPU model thread | model thread CPU ms per frame | CPU other threads | viewer frames/s (each "
        "healthy) | SSE events | stall cycles "
        "| viewers dropped by the server | close s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r, res in rows:
        lines.append(
            f"| {name} | {r} | {res['fps']:.1f} | {res['frame_ms']:.1f} | {res['publish_ms']:.3f} / "
            f"{res['publish_cpu_ms']:.3f} | "
            f"{100 * res['main_cpu']:.0f}% | {1000 * res['main_cpu'] / res['fps']:.1f} | "
            f"{100 * res['other_cpu']:.0f}% | {res['viewer_fps']:.1f} | "
            f"{res['events']} | {res['stalls']} | {res['dropped']} | {res['close_s']:.2f} |"
        )
    lines += [
        "",
        "| condition | processed fps (mean of rounds) | vs no web view | model thread CPU ms per frame (mean) "
        "| CPU other threads (mean) |",
        "|---|---|---|---|---|",
    ]
    base = statistics.mean(res["fps"] for name, _, res in rows if name == conditions[0][0])
    for name, *_ in conditions:
        mine = [res for n, _, res in rows if n == name]
        fps = statistics.mean(res["fps"] for res in mine)
        cpu = statistics.mean(res["other_cpu"] for res in mine)
        per_frame = statistics.mean(1000 * res["main_cpu"] / res["fps"] for res in mine)
        lines.append(f"| {name} | {fps:.1f} | {100 * (fps / base - 1):+.1f}% | {per_frame:.1f} | {100 * cpu:.0f}% |")
    lines += [
        "",
        'CPU columns: CPU seconds per second of stream (100% = one core); "other threads" is the capture '
        "thread plus, with "
        "the web view, the server's threads (JPEG encoding and sending). Viewers' own CPU (another process) is "
        "not counted but competes for the same cores.",
    ]
    argv = " ".join(shlex.quote(a) for a in sys.argv[1:])
    lines += ["", f"Command: `python3 benchmarks/bench_web.py {argv}`"]
    text = "\n".join(lines) + "\n"
    if args.out:
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
