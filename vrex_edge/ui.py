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


@contextmanager
def export_progress() -> Iterator[Callable[[str], None]]:
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=err, transient=True) as p:
        task = p.add_task("export", total=None)

        def update(message: str) -> None:
            p.update(task, description=message)
            p.console.log(message)

        yield update


def print_export_report(report: Any) -> None:
    t = Table(title=f"exported {report.out}", show_lines=False)
    t.add_column("stage")
    t.add_column("max abs error vs PyTorch", justify="right")
    for stage, e in report.errors.items():
        t.add_row(stage, f"{e:.2e}")
    err.print(t)
    extra = f" in {report.seconds:.1f} s" if getattr(report, "seconds", None) else ""
    err.print(f"bundle written to {report.out}{extra}")


def print_manifest(root: Path, m: Any) -> None:
    t = m.text
    table = Table(title=f"{m.name}  ({root})", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    table.add_row("family", f"{m.family}  (format v{m.format_version}, {m.dtype})")
    table.add_row("LM", f"{t.num_layers} layers, hidden {t.hidden_size}, {t.num_heads} heads / {t.num_kv_heads} KV heads, head_dim {t.head_dim}")
    table.add_row("vocab / context", f"{t.vocab_size} tokens, {t.max_positions} trained positions")
    scaling = f", scaling {t.rope.scaling_type}" if t.rope.scaling_type else ""
    table.add_row("RoPE", f"theta {t.rope.theta:g}{scaling}")
    if m.vision is not None:
        v = m.vision
        table.add_row("vision", f"{v.image_size[1]}x{v.image_size[0]} ({v.resize}), {v.tokens_per_frame} tokens per frame")
    tk = m.tokens
    table.add_row("tokens", f"end of turn {list(tk.end_of_turn)}, frame placeholder {tk.frame_placeholder}, frame interval {tk.frame_interval}")
    table.add_row("speak threshold", f"{m.prompt.speak_threshold:g}")
    size = sum((root / f).stat().st_size for f in m.files)
    table.add_row("files", f"{len(m.files)} files, {human_bytes(size)}, sha256 verified")
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
            TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total} frames"),
            TextColumn("{task.fields[fps]:.1f} fps"), TextColumn("cache {task.fields[cache]}"),
            TimeElapsedColumn(), TimeRemainingColumn(), console=err, transient=False, disable=not enabled,
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
