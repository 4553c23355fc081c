"""Caption/answer writers (text, SRT, JSONL) and safe output files.

`SafeOutput` writes to a temporary file beside the target and renames it into place only
when the stream finishes, so an interrupted run never destroys a file the user already had.
The new file gets the mode the user's umask gives, or the mode of the file it replaces. The
temporary file is named `.NAME.<pid>-<random>.tmp` and locked while its run lives; a later run
removes those of dead runs (kill -9). A target that is not a regular file (/dev/null, a FIFO)
is written in place.
`AppendOutput` appends and flushes each record (for live sessions: a crash loses nothing said).
Write errors (full disk, permissions) are one-line `OutputError`s.
"""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
import stat
import sys
from pathlib import Path
from typing import IO, Literal

from vrex_edge.errors import ConfigError, OutputError
from vrex_edge.liveness import hold_lock, pid_alive, unlocked

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

    def __init__(self, stream: IO[str] | OutputStream, fmt: str, *, cue_seconds: float = 2.0):
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


class OutputStream:
    """A text stream whose write errors (full disk, permissions, I/O) raise a one-line OutputError."""

    def __init__(self, stream: IO[str], name: str):
        self._stream, self.name = stream, name

    def _error(self, e: OSError) -> OutputError:
        hint = "; free some space or write elsewhere" if e.errno in (errno.ENOSPC, errno.EDQUOT) else ""
        return OutputError(f"cannot write {self.name}: {e.strerror or e}{hint}")

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:  # the reader went away (`| head`): the CLI ends quietly
            raise
        except OSError as e:
            raise self._error(e) from None

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            raise
        except OSError as e:
            raise self._error(e) from None

    def fileno(self) -> int:
        return self._stream.fileno()

    def close(self) -> None:
        try:
            self._stream.close()
        except OSError as e:
            raise self._error(e) from None


def _fdopen(fd: int) -> IO[str]:
    """The text stream over an output file's descriptor (tests swap it to inject write errors)."""
    return os.fdopen(fd, "w", encoding="utf-8")


def _temp_pattern(name: str) -> re.Pattern[str]:
    return re.compile(rf"\.{re.escape(name)}\.(\d+)-[0-9a-f]+\.tmp")


def remove_stale_temps(target: Path) -> list[Path]:
    """Remove temporary files of `target` left by runs that died (kill -9, power loss) -> those removed."""
    pattern, removed = _temp_pattern(target.name), []
    try:
        names = os.listdir(target.parent)
    except OSError:
        return removed
    for name in names:
        m = pattern.fullmatch(name)
        path = target.parent / name
        if m is None or pid_alive(int(m.group(1))) or not unlocked(path):
            continue
        try:
            path.unlink()
            removed.append(path)
        except OSError:
            pass
    return removed


class SafeOutput:
    """Context manager: a temp file beside `path`, renamed over it only on success (None: stdout)."""

    def __init__(self, path: str | os.PathLike[str] | None):
        self.path = Path(path) if path is not None else None
        self._tmp: Path | None = None
        self._fd: int | None = None
        self.stream = OutputStream(sys.stdout, "stdout")

    def __enter__(self) -> OutputStream:
        if self.path is None:
            return self.stream
        if self.path.is_dir():
            raise ConfigError(f"output is a folder, not a file: {self.path}")
        target = Path(os.path.realpath(self.path))  # through a symlink: its file is replaced, not the link
        parent = target.parent
        if not parent.is_dir():
            raise ConfigError(f"output folder does not exist: {self.path.parent}")
        if target.exists() and not target.is_file():  # a device or a FIFO: nothing to replace
            fd = self._open(target, os.O_WRONLY | os.O_APPEND, f"cannot open output {self.path}")
        else:
            remove_stale_temps(target)
            self._tmp = parent / f".{target.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp"
            # 0o666 through the umask, as any new file; an existing file's mode is kept below
            fd = self._open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, f"cannot create a file in {parent}")
            hold_lock(fd)
            try:
                os.fchmod(fd, stat.S_IMODE(os.stat(target).st_mode))
            except OSError:
                pass  # no file to replace (or not ours to read): the umask's mode stays
        self._fd, self._target = fd, target
        self.stream = OutputStream(_fdopen(fd), str(self.path))
        return self.stream

    @staticmethod
    def _open(path: Path, flags: int, what: str) -> int:
        try:
            return os.open(path, flags | os.O_CLOEXEC, 0o666)
        except OSError as e:
            raise OutputError(f"{what}: {e.strerror or e}; choose another --output") from None

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.path is None:
            if exc_type is None:
                self.stream.flush()
            return
        if exc_type is not None:
            self._discard()
            return
        try:
            self.stream.flush()
            if self._tmp is not None:
                os.fsync(self.stream.fileno())  # the data is on disk before the rename makes it the file
            self.stream.close()
            if self._tmp is not None:
                os.replace(self._tmp, self._target)
                self._tmp = None
        except OutputError:
            self._discard()
            raise
        except OSError as e:
            self._discard()
            raise OutputError(f"cannot write {self.path}: {e.strerror or e}") from None

    def _discard(self) -> None:
        """Close quietly and remove the temporary file (the user's file stays as it was)."""
        try:
            self.stream.close()
        except (OutputError, OSError):
            pass
        if self._tmp is not None:
            try:
                self._tmp.unlink()
            except OSError:
                pass
            self._tmp = None


class AppendOutput:
    """Context manager appending to `path` (created if absent); each record is flushed."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)

    def __enter__(self) -> OutputStream:
        if self.path.is_dir():
            raise ConfigError(f"output is a folder, not a file: {self.path}")
        if not (self.path.parent if str(self.path.parent) else Path(".")).is_dir():
            raise ConfigError(f"output folder does not exist: {self.path.parent}")
        try:
            self.stream = OutputStream(open(self.path, "a", encoding="utf-8"), str(self.path))
        except OSError as e:
            raise OutputError(f"cannot open output {self.path}: {e.strerror or e}; choose another --output") from None
        return self.stream

    def __exit__(self, *exc: object) -> None:
        try:
            self.stream.close()
        except OutputError:
            if exc[0] is None:
                raise
