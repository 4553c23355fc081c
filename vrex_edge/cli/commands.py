"""Command bodies: wire a frame source, a model, a session, a writer and the UI together.

The CLI parses its flags into a SessionConfig and calls these; the runtime yields events; this
module routes each event to the output writer (the data) and the UI (progress and summary on stderr).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from vrex_edge.cli.signals import StopOnSignal
from vrex_edge.errors import ConfigError, IncompleteInputError
from vrex_edge.outputs import FORMATS, RecordWriter, SafeOutput, clock
from vrex_edge.runtime.config import SessionConfig, open_session


def kv_config(
    budget: str | None, keep: Path | None, resume: Path | None, on_full: str = "error", *, prefetch: bool = True
) -> Any:
    """--kv-budget / --keep-kv / --resume / --kv-on-full / --[no-]kv-prefetch -> a kvstore.TierConfig, or None
    (all resident)."""
    if budget is None and keep is None and resume is None:
        return None
    from vrex_edge.runtime.kvstore import TierConfig, parse_bytes

    return TierConfig(
        budget=None if budget is None else parse_bytes(budget),
        keep=keep,
        resume=resume,
        on_full=on_full,
        prefetch=prefetch,
    )


def stats_rows(stats: Any) -> list[tuple[str, str]]:
    from vrex_edge.ui import count, human_bytes

    rows = [
        ("frames", f"{stats.frames:,} in {stats.wall_s:.1f} s ({stats.fps:.1f} fps, replies included)"),
        ("frame latency", f"median {stats.frame_ms_median:.1f} ms, p95 {stats.frame_ms_p95:.1f} ms"),
        (
            "replies",
            f"{count(stats.captions, 'caption')}, {count(stats.answers, 'answer')}, "
            f"{count(stats.generated_tokens, 'token')} generated",
        ),
        ("KV cache", f"{stats.tokens:,} tokens, {human_bytes(stats.cache_bytes)}"),
    ]
    retrieval = stats.retrieval or {}
    for phase in ("prefill", "decode"):
        ratio = retrieval.get(f"{phase}_kept_fraction")
        if ratio is not None:
            rows.append((f"kept ({phase})", f"{100 * ratio:.1f}% of history tokens"))
    tiers = retrieval.get("tiers")
    if tiers:
        budget = "unbounded" if tiers["budget"] is None else human_bytes(tiers["budget"])
        pf = (tiers.get("prefetch") or {}).get("recall")
        rows.append(
            (
                "KV tiers",
                f"resident {human_bytes(tiers['kv'])} (peak {human_bytes(tiers['peak'])}) of {budget}, "
                f"tables {human_bytes(tiers['tables'])}, on disk {human_bytes(tiers['cold_bytes'])}, "
                f"{count(tiers['fetched'], 'cluster')} read on demand"
                + (f", prefetch recall {100 * pf:.0f}%" if pf is not None else "")
                + (
                    f", {count(tiers['retired']['blocks'], 'block')} of representatives retired to disk"
                    if (tiers.get("retired") or {}).get("blocks")
                    else ""
                ),
            )
        )
    failure = ((tiers or {}).get("prefetch") or {}).get("failure")
    if failure:
        rows.append(("warning", f"KV prefetch stopped after an error ({failure}); clusters were read on demand"))
    timing = retrieval.get("seconds") or {}
    if timing:
        rows.append(("retrieval time", ", ".join(f"{k} {1000 * v:.0f} ms" for k, v in sorted(timing.items()))))
    return rows


def native_imports() -> None:
    """Import the native modules a session loads before the stop handlers go in: an Interrupted raised
    inside a native module's import breaks the import (onnxruntime: "initialization failed")."""
    import onnx  # noqa: F401
    import onnxruntime  # noqa: F401


def caption_video(
    video: Path,
    config: SessionConfig,
    *,
    fmt: str,
    output: Path | None,
    questions: list[tuple[float, str]],
    quiet: bool,
) -> None:
    """Narrate `video` at config.fps; answer `questions` (t, text); write records to `output` or stdout."""
    from vrex_edge.runtime.capture import open_video

    if fmt not in FORMATS:
        raise ConfigError(f"unknown output format '{fmt}' (choose from: {', '.join(FORMATS)})")
    source = open_video(video, fps=config.fps)  # fails early on a missing / unreadable video
    late = [t for t, _ in questions if 0 < source.info.duration < t]
    if late:  # would be answered after the stream, at a time the video never reaches
        raise ConfigError(f"--ask at {clock(late[0])} is after the end of {video} ({clock(source.info.duration)})")
    left = f"; {output} left as it was" if output else ""
    native_imports()
    stops = StopOnSignal()  # SIGINT/SIGTERM/SIGHUP: stop at the next frame; a second one at once
    with stops:
        with stops.at_once("before the stream started" + left):  # loading: stop now, nothing is written
            session = open_session(config)
        _caption_stream(session, source, stops, config, fmt=fmt, output=output, questions=questions, quiet=quiet)


def _caption_stream(
    session: Any,
    source: Any,
    stops: StopOnSignal,
    config: SessionConfig,
    *,
    fmt: str,
    output: Path | None,
    questions: list[tuple[float, str]],
    quiet: bool,
) -> None:
    from vrex_edge.runtime.events import Answer, Caption, FrameProcessed, Stats
    from vrex_edge.ui import StreamProgress, print_table

    fps = config.fps
    offset = session.resumed_time or 0.0  # --resume: time goes on
    frames = ((t + offset, f) for t, f in source) if offset else source
    questions = [(t + offset, q) for t, q in questions]
    last_t, ok = offset - 1 / fps, False
    total = source.info.sampled_frames(fps)
    final: Stats | None = None
    try:
        with SafeOutput(output) as stream, StreamProgress(total, enabled=not quiet) as progress:
            writer = RecordWriter(stream, fmt)
            done, busy_ms = 0, 0.0
            for event in session.run(stops.frames(frames), questions):
                if isinstance(event, FrameProcessed):
                    last_t = event.t
                    done, busy_ms = done + 1, busy_ms + event.timings_ms.get("total", 0.0)
                    progress.frame(fps=1000 * done / busy_ms if busy_ms > 0 else 0.0, cache_tokens=event.cache_tokens)
                elif isinstance(event, Caption):
                    writer.write(t=event.t, kind="caption", text=event.text)
                elif isinstance(event, Answer):
                    writer.write(t=event.t, kind="answer", text=event.text, question=event.question)
                elif isinstance(event, Stats):
                    final = event
            # stopped by a signal: the output is incomplete, so the user's file is left as it was
            stops.check(f"at {clock(last_t)} of the stream" + (f"; {output} left as it was" if output else ""))
        ok = True
    finally:  # removes a temporary KV store; saves a kept one (after a clean end or a stop at a frame boundary)
        with stops.shielded():
            session.close(ok=ok or stops.clean_stop, stream_time=last_t + 1 / fps)
    if final is not None and not quiet:
        print_table("stream summary", stats_rows(final))
    if source.incomplete is not None:  # the output holds what decoded; exit 3 says the rest is missing
        kept = f"; what decoded was processed{f' and written to {output}' if output else ''}"
        raise IncompleteInputError(source.incomplete.message() + kept)


def open_live_reader(camera: int | None, source: str | None) -> Any:
    """--camera N or --source FILE/URL/DEVICE -> a FrameReader (files play at their real rate)."""
    from vrex_edge.runtime.live import OpenCVReader

    if (camera is None) == (source is None):
        raise ConfigError("give exactly one of --camera N or --source FILE_OR_URL")
    if camera is not None:
        if camera < 0:
            raise ConfigError(f"--camera must be a device index >= 0, got {camera}")
        return OpenCVReader(camera)
    assert source is not None
    is_file = Path(source).is_file() and not source.startswith("/dev/")
    return OpenCVReader(source, paced=is_file)


def live_stream(
    config: SessionConfig,
    *,
    camera: int | None,
    source: str | None,
    output: Path | None,
    fmt: str,
    show: bool,
    retry_s: float,
    web: str | None = None,
    notice: Callable[[str], None] | None = None,
) -> None:
    """Narrate a camera or stream in real time at config.fps; typed questions are answered in the stream.
    web: also serve a web view at [HOST:]PORT (vrex_edge.web); notice: where its address is said."""
    import queue

    from vrex_edge.outputs import AppendOutput
    from vrex_edge.runtime.events import Answer, Caption, FrameProcessed, Stats
    from vrex_edge.runtime.live import CaptureThread, LiveStatus, live_events
    from vrex_edge.ui import FrameWindow, LiveView, QuestionInput, print_table

    if fmt not in ("jsonl", "srt", "text"):
        raise ConfigError(f"unknown output format '{fmt}' (choose from: jsonl, srt, text)")
    fps = config.fps
    web_config = _web_config(web)  # a bad --web fails before the model loads
    native_imports()
    stops = StopOnSignal()  # SIGINT/SIGTERM/SIGHUP end the stream cleanly (a kept store is saved); a second at once
    stops.__enter__()
    try:
        with stops.at_once("before the stream started"):  # loading: stop now, nothing is written
            session = open_session(config)
    except BaseException:
        stops.__exit__()
        raise
    try:
        reader = open_live_reader(camera, source)
        window = FrameWindow.open() if show else None
        questions: queue.Queue[str] = queue.Queue()
        web_view = _open_web(web_config, questions, reader.name, notice)
    except BaseException:
        stops.__exit__()
        session.close(ok=False)
        raise
    stop = stops.event
    capture = CaptureThread(reader, fps=fps, retry_s=retry_s)
    offset = session.resumed_time or 0.0  # --resume: time goes on
    clock = _ShiftedCapture(capture, offset) if offset else capture
    final_status: LiveStatus | None = None
    out_cm = AppendOutput(output) if output is not None else None
    stream = out_cm.__enter__() if out_cm is not None else None
    writer = RecordWriter(stream, fmt) if stream is not None else None
    view = LiveView(reader.name)
    interrupted = clean = False
    last_t = offset - 1 / fps

    try:
        with QuestionInput(questions, view) as typing_, view.running(interactive=typing_.interactive):
            capture.start()
            for event in live_events(
                session,
                clock,
                questions,
                stop=stop,
                on_frame=_fan_out(
                    window.show if window is not None else None, web_view.image if web_view is not None else None
                ),
            ):
                if isinstance(event, Caption | Answer):
                    question = event.question if isinstance(event, Answer) else None
                    view.record(event.t, event.text, question)
                    if web_view is not None:
                        web_view.record(event.t, event.text, question)
                    if window is not None:
                        window.show_caption(event.text)
                    if writer is not None:
                        writer.write(
                            t=event.t, kind="answer" if question else "caption", text=event.text, question=question
                        )
                elif isinstance(event, FrameProcessed):
                    last_t = event.t
                    view.frame(event)
                    if web_view is not None:
                        web_view.frame(event, session.stats)
                elif isinstance(event, LiveStatus):
                    final_status = event
                    view.status(event)
                    if web_view is not None:
                        web_view.status(event)
                elif isinstance(event, Stats):
                    pass
        clean = True
    except KeyboardInterrupt:
        interrupted = True
    finally:
        with stops.shielded():  # a signal now is noted, not raised: the clean-up (a kept store's save) finishes
            stop.set()
            capture.stop()
            if web_view is not None:
                web_view.close()  # viewers get "end"; before session.close, which may take a while saving a kept store
            session.close(ok=clean, stream_time=last_t + 1 / fps)  # a kept KV store is saved only after a clean end
            if window is not None:
                window.close()
            if out_cm is not None:
                out_cm.__exit__(None, None, None)
        stops.__exit__()
        interrupted = interrupted or stops.stopped
    status = capture.status()
    stats = session.stats()
    rows = stats_rows(stats)
    rows.insert(
        1,
        (
            "capture",
            f"{status.captured:,} frames read, {status.sampled:,} sampled at {fps:g} fps, "
            f"{status.dropped:,} dropped while the model was busy",
        ),
    )
    if final_status is not None and final_status.lag_ms is not None:
        rows.insert(2, ("lag", f"{final_status.lag_ms:.0f} ms capture -> last reply"))
    rows.append(("ended", (stops.name or "Ctrl-C") if interrupted else status.message or status.state))
    if clean and session.tiers is not None and session.tiers.keep:
        rows.append(("KV store", f"kept in {session.tiers.folder}: continue with --resume {session.tiers.folder}"))
    print_table("live session summary", rows)
    if status.state == "failed" and not interrupted:
        from vrex_edge.errors import SourceError

        raise SourceError(status.message + (f"; session saved in {output}" if output else ""))
    incomplete = getattr(reader, "incomplete", None)  # a file that decoded only partly: exit 3, as caption
    if incomplete is not None and not interrupted:
        kept = f"; what decoded was processed{f' and written to {output}' if output else ''}"
        raise IncompleteInputError(incomplete.message() + kept)


class _ShiftedCapture:
    """A CaptureThread whose times go on from where a resumed stream stopped (--resume)."""

    def __init__(self, capture: Any, offset: float):
        self.capture, self.offset = capture, offset

    def get(self, timeout: float) -> Any:
        item = self.capture.get(timeout)
        return None if item is None else (item[0] + self.offset, item[1])

    def now(self) -> float:
        return self.capture.now() + self.offset

    def __getattr__(self, name: str) -> Any:
        return getattr(self.capture, name)


# ---------------------------------------------------------------------------- --web


def _web_config(value: str | None) -> Any:
    """--web [HOST:]PORT -> a vrex_edge.web.WebConfig (ConfigError if malformed), or None."""
    if value is None:
        return None
    from vrex_edge.web import parse_web

    return parse_web(value)


def _open_web(config: Any, questions: Any, title: str, notice: Callable[[str], None] | None) -> Any:
    """Bind and start the web view (ConfigError for a port in use); say where it is through `notice`."""
    if config is None:
        return None
    from vrex_edge.web import WebView

    web = WebView(config, questions, title=title).start()
    if notice is not None:
        notice(web.banner)
    return web


def _fan_out(*callbacks: Callable[[float, Any], None] | None) -> Callable[[float, Any], None] | None:
    """One on_frame callback that calls each given one in turn; None when none is given."""
    given = [c for c in callbacks if c is not None]
    if not given:
        return None
    if len(given) == 1:
        return given[0]

    def call(t: float, frame: Any) -> None:
        for c in given:
            c(t, frame)

    return call
