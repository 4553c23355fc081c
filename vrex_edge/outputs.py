"""Caption/answer writers (text, SRT, JSONL) and safe output files.

`SafeOutput` writes to a temporary file beside the target and renames it into place only
when the stream finishes, so an interrupted run never destroys a file the user already had.
`AppendOutput` appends and flushes each record (for live sessions: a crash loses nothing said).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import IO, Literal

from vrex_edge.errors import ConfigError

Format = Literal["text", "srt", "jsonl"]
FORMATS: tuple[str, ...] = ("text", "srt", "jsonl")


def clock(t: float, *, srt: bool = False) -> str:
    """Seconds -> 'HH:MM:SS.mmm' (SRT uses a comma)."""
    ms = int(round(max(t, 0.0) * 1000))
    h, rem = divmod(ms, 3_600_000)
    m, rem = divmod(rem, 60_000)
    s, ms = divmod(rem, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{',' if srt else '.'}{ms:03d}"


class RecordWriter:
    """Formats records {t, kind, text, question?} as text lines, SRT cues or JSON lines."""

    def __init__(self, stream: IO[str], fmt: str, *, cue_seconds: float = 2.0):
        if fmt not in FORMATS:
            raise ConfigError(f"unknown output format '{fmt}' (choose from: {', '.join(FORMATS)})")
        self.stream, self.fmt, self.cue_seconds = stream, fmt, cue_seconds
        self.count = 0

    def write(self, *, t: float, kind: str, text: str, question: str | None = None) -> None:
        self.count += 1
        if self.fmt == "jsonl":
            rec = {"t": round(t, 3), "kind": kind, "text": text}
            if question is not None:
                rec["question"] = question
            self.stream.write(json.dumps(rec, ensure_ascii=False) + "\n")
        elif self.fmt == "srt":
            body = f"Q: {question}\nA: {text}" if question is not None else text
            start, end = clock(t, srt=True), clock(t + self.cue_seconds, srt=True)
            self.stream.write(f"{self.count}\n{start} --> {end}\n{body}\n\n")
        else:
            body = f"Q: {question} -> A: {text}" if question is not None else text
            self.stream.write(f"[{clock(t)}] {body}\n")
        self.stream.flush()


class SafeOutput:
    """Context manager: a temp file beside `path`, renamed over it only on success."""

    def __init__(self, path: str | os.PathLike[str] | None):
        self.path = Path(path) if path is not None else None
        self._tmp: str | None = None
        self.stream: IO[str] = sys.stdout

    def __enter__(self) -> IO[str]:
        if self.path is None:
            return sys.stdout
        parent = self.path.parent if str(self.path.parent) else Path(".")
        if not parent.is_dir():
            raise ConfigError(f"output folder does not exist: {parent}")
        if self.path.is_dir():
            raise ConfigError(f"output is a folder, not a file: {self.path}")
        fd, self._tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=parent)
        self.stream = os.fdopen(fd, "w", encoding="utf-8")
        return self.stream

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.path is None or self._tmp is None:
            return
        self.stream.close()
        if exc_type is None:
            os.replace(self._tmp, self.path)
        else:
            os.unlink(self._tmp)


class AppendOutput:
    """Context manager appending to `path` (created if absent); each record is flushed."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)

    def __enter__(self) -> IO[str]:
        if self.path.is_dir():
            raise ConfigError(f"output is a folder, not a file: {self.path}")
        try:
            self.stream = open(self.path, "a", encoding="utf-8")
        except OSError as e:
            raise ConfigError(f"cannot open output {self.path}: {e.strerror}") from None
        return self.stream

    def __exit__(self, *exc: object) -> None:
        self.stream.close()
