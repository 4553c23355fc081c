"""Terminal rendering with rich. The only module that draws; everything goes to stderr
except the data the user asked for (captions), which the caller writes to stdout or a file."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

err = Console(stderr=True, highlight=False, log_path=False)


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def count(n: int, noun: str, plural: str | None = None) -> str:
    """count(1, 'answer') -> '1 answer'; count(7699039, 'cluster') -> '7,699,039 clusters'."""
    return f"{n:,} {noun if n == 1 else plural or noun + 's'}"


@contextmanager
def export_progress() -> Iterator[Callable[[str], None]]:
    """A spinner with the latest message, started by the first message (an error before it prints alone)."""
    p = Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=err, transient=True)
    task = p.add_task("export", total=None)

    def update(message: str) -> None:
        if not p.live.is_started:
            p.start()
        p.update(task, description=message)
        p.console.log(message)

    try:
        yield update
    finally:
        if p.live.is_started:
            p.stop()


def print_export_report(report: Any) -> None:
    t = Table(title=f"exported {report.out}", show_lines=False)
    t.add_column("stage")
    t.add_column("max abs error vs PyTorch", justify="right")
    for stage, e in report.errors.items():
        t.add_row(stage, f"{e:.2e}")
    err.print(t)
    extra = f" in {report.seconds:.1f} s" if getattr(report, "seconds", None) else ""
    if getattr(report, "peak_rss_bytes", 0):
        extra += f", peak RSS {report.peak_rss_bytes / 2**30:.2f} GiB"
    err.print(f"bundle written to {report.out}{extra}")


def print_manifest(root: Path, m: Any, *, full: bool = False) -> None:
    """The bundle's table on stdout; full: every file was hashed now (else unchanged files were trusted)."""
    t = m.text
    table = Table(title=f"{m.name}  ({root})", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    table.add_row("family", f"{m.family}  (format v{m.format_version}, {m.dtype})")
    table.add_row(
        "LM",
        f"{t.num_layers} layers, hidden {t.hidden_size}, {t.num_heads} heads / {t.num_kv_heads} KV heads, "
        f"head_dim {t.head_dim}",
    )
    table.add_row("vocab / context", f"{t.vocab_size} tokens, {t.max_positions} trained positions")
    scaling = f", scaling {t.rope.scaling_type}" if t.rope.scaling_type else ""
    table.add_row("RoPE", f"theta {t.rope.theta:g}{scaling}")
    if m.vision is not None:
        v = m.vision
        table.add_row(
            "vision", f"{v.image_size[1]}x{v.image_size[0]} ({v.resize}), {v.tokens_per_frame} tokens per frame"
        )
    tk = m.tokens
    table.add_row(
        "tokens",
        f"end of turn {list(tk.end_of_turn)}, frame placeholder {tk.frame_placeholder}, frame interval "
        f"{tk.frame_interval}",
    )
    table.add_row("speak threshold", f"{m.prompt.speak_threshold:g}")
    size = sum((root / f).stat().st_size for f in m.files)
    how = "sha256 verified" + ("" if full else " (unchanged files: cached; --verify hashes all)")
    table.add_row("files", f"{len(m.files)} files, {human_bytes(size)}, {how}")
    n_stages = 2 + 2 * t.num_layers + (m.stages.vision is not None) + len(m.stages.extra)
    table.add_row("stages", f"{n_stages} graphs (vision, embed, pre/post per layer, head)")
    if m.source:
        table.add_row("source", m.source)
    Console().print(table)


class StreamProgress:
    """A progress bar on stderr with frames, FPS and cache size, fed by runtime events."""

    def __init__(self, total: int | None, *, enabled: bool = True):
        self.enabled = enabled
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total} frames"),
            TextColumn("{task.fields[fps]:.1f} fps"),
            TextColumn("cache {task.fields[cache]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=err,
            transient=False,
            disable=not enabled,
        )
        self.task = self.progress.add_task("stream", total=total, fps=0.0, cache="0")

    def __enter__(self) -> StreamProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(*exc)

    def frame(self, *, fps: float, cache_tokens: int) -> None:
        self.progress.update(self.task, advance=1, fps=fps, cache=f"{cache_tokens:,} tok")


def print_table(title: str, rows: list[tuple[str, str]]) -> None:
    t = Table(title=title, show_header=False)
    t.add_column("what", style="bold")
    t.add_column("value")
    for key, value in rows:
        t.add_row(key, value)
    err.print(t)


# ---------------------------------------------------------------------------- live


class LiveView:
    """The live terminal UI: narration with stream times, rates, latency, cache, an input line."""

    def __init__(self, source_name: str, *, max_lines: int = 14):
        import collections

        self.source_name = source_name
        self.lines: collections.deque[str] = collections.deque(maxlen=max_lines)
        self.buffer = ""
        self.live_status: Any = None
        self.frame_ms = 0.0
        self.cache_tokens = 0
        self.kept: float | None = None
        self.console = Console(highlight=False)
        self._live: Any = None

    @contextmanager
    def running(self, *, interactive: bool) -> Iterator[LiveView]:
        from rich.live import Live

        if not (interactive and self.console.is_terminal):
            yield self  # plain mode: records are printed as they come
            return
        with Live(self, console=self.console, refresh_per_second=8, transient=False) as live:
            self._live = live
            try:
                yield self
            finally:
                self._live = None

    def record(self, t: float, text: str, question: str | None) -> None:
        from vrex_edge.outputs import clock

        line = f"[{clock(t)}] " + (f"Q: {question}  A: {text}" if question is not None else text)
        self.lines.append(line)
        if self._live is None:
            self.console.print(line, markup=False)

    def frame(self, event: Any) -> None:
        self.frame_ms = event.timings_ms.get("total", 0.0)
        self.cache_tokens = event.cache_tokens

    def status(self, status: Any) -> None:
        self.live_status = status
        if self._live is None and status.capture.state not in ("running",):
            self.console.print(f"[{status.capture.state}] {status.capture.message}", markup=False)

    def __rich__(self) -> Any:
        from rich.console import Group
        from rich.panel import Panel
        from rich.text import Text

        body = Text("\n".join(self.lines) or "(waiting for the first narration)")
        s = self.live_status
        if s is not None:
            el = max(s.elapsed, 1e-6)
            cap = s.capture
            lag = f"{s.lag_ms:.0f} ms" if s.lag_ms is not None else "-"
            line = (
                f"captured {cap.captured / el:.1f} fps | processed {s.processed / el:.1f} fps | dropped "
                f"{cap.dropped} | "
                f"frame {self.frame_ms:.0f} ms | lag {lag} | cache {self.cache_tokens:,} tok"
            )
            if cap.state != "running":
                line += f" | {cap.state}: {cap.message}"
        else:
            line = "starting..."
        return Group(
            Panel(body, title=f"vrex-edge live: {self.source_name}", title_align="left"),
            Text(line, style="dim"),
            Text(f"ask> {self.buffer}", style="bold"),
        )


class QuestionInput:
    """Reads questions typed while the stream runs. On a terminal: keys in cbreak mode, echoed
    into the view's input line; otherwise (a pipe): one question per line."""

    def __init__(self, questions: Any, view: LiveView):
        import sys
        import threading

        self.questions, self.view = questions, view
        self.stdin = sys.stdin
        self.interactive = bool(self.stdin is not None and self.stdin.isatty())
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="vrex-input", daemon=True)
        self._saved: Any = None

    def __enter__(self) -> QuestionInput:
        if self.stdin is None or self.stdin.closed:
            return self
        if self.interactive:
            import termios
            import tty

            fd = self.stdin.fileno()
            self._saved = termios.tcgetattr(fd)
            tty.setcbreak(fd)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._saved is not None:
            import termios

            termios.tcsetattr(self.stdin.fileno(), termios.TCSADRAIN, self._saved)

    def _submit(self, text: str) -> None:
        text = text.strip()
        if text:
            self.questions.put(text)

    def _run(self) -> None:
        import os
        import select

        if not self.interactive:
            for line in self.stdin:
                if self._stop.is_set():
                    return
                self._submit(line)
            return
        fd = self.stdin.fileno()
        while not self._stop.is_set():
            ready, _, _ = select.select([fd], [], [], 0.1)
            if not ready:
                continue
            ch = os.read(fd, 1).decode("utf-8", "ignore")
            if ch in ("\r", "\n"):
                self._submit(self.view.buffer)
                self.view.buffer = ""
            elif ch in ("\x7f", "\b"):
                self.view.buffer = self.view.buffer[:-1]
            elif ch.isprintable():
                self.view.buffer += ch


class FrameWindow:
    """--show: an OpenCV window with the frame and the latest caption drawn on it."""

    def __init__(self) -> None:
        self.caption = ""

    def show_caption(self, text: str) -> None:
        """Draw `text` under the frames shown from now on."""
        self.caption = text

    @classmethod
    def open(cls) -> FrameWindow | None:
        import os
        import sys

        if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
            err.print("notice: no display found; --show is ignored")
            return None
        try:
            import cv2

            cv2.namedWindow("vrex-edge", cv2.WINDOW_NORMAL)
        except Exception as e:  # a build of OpenCV without GUI support
            err.print(f"notice: cannot open a window ({str(e).splitlines()[0][:80]}); --show is ignored")
            return None
        return cls()

    def show(self, t: float, frame: Any) -> None:
        import cv2

        img = frame.copy()
        if self.caption:
            cv2.rectangle(img, (0, img.shape[0] - 28), (img.shape[1], img.shape[0]), (0, 0, 0), -1)
            cv2.putText(
                img, self.caption[:90], (6, img.shape[0] - 9), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1
            )
        cv2.imshow("vrex-edge", img)
        cv2.waitKey(1)

    def close(self) -> None:
        import cv2

        cv2.destroyAllWindows()
