"""Stop signals for the streaming commands: SIGINT, SIGTERM and SIGHUP end a stream at a frame boundary.

The first signal sets `StopOnSignal.event`; the stream loop sees it before taking the next frame
and ends as a stream does, so every clean-up runs (a kept KV store is saved, a temporary one is
removed, a temporary output file is removed or renamed). A second signal raises `Interrupted`
(a KeyboardInterrupt) wherever the main thread is: clean-ups in `finally` blocks still run.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any, TypeVar

T = TypeVar("T")
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interrupted(KeyboardInterrupt):
    """A stream stopped by a signal before its end; exit_code is the shell's 128 + signal number."""

    def __init__(self, signum: int, detail: str = ""):
        super().__init__(signum)
        self.signum, self.detail = signum, detail
        self.exit_code = 128 + signum

    def __str__(self) -> str:
        return f"interrupted by {signal.Signals(self.signum).name}" + (f" {self.detail}" if self.detail else "")


class StopOnSignal:
    """Context manager: while active (in the main thread), a stop signal requests a stop at the next
    frame boundary and a second one raises Interrupted. Elsewhere (a worker thread) it does nothing;
    a signal the process ignores (SIGHUP under nohup) stays ignored."""

    def __init__(self, signals: Iterable[int] = STOP_SIGNALS):
        self.signals = tuple(signals)
        self.event = threading.Event()
        self.signum: int | None = None
        self.forced = False  # a second signal interrupted the stream between frame boundaries
        self._at_once: str | None = None  # inside at_once(): where a signal stops
        self._shielded = False  # inside shielded(): signals are noted, the block runs to its end
        self._old: dict[int, Any] = {}

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for s in self.signals:
                if signal.getsignal(s) is not signal.SIG_IGN:  # nohup, or a background job's SIGINT: stay ignored
                    self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._old.items():
            signal.signal(s, handler)
        self._old.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self._shielded:
            self.signum = self.signum or signum
            self.event.set()
            return
        if self.event.is_set() or self._at_once is not None:
            self.forced = True
            self.signum = self.signum or signum
            self.event.set()
            raise Interrupted(signum, self._at_once or "")
        self.signum = signum
        self.event.set()

    @contextmanager
    def at_once(self, detail: str) -> Iterator[None]:
        """Within the block (loading the model: no frame boundary to wait for), a stop signal raises
        Interrupted(detail) at once; the block's clean-ups run as it unwinds."""
        self._at_once = detail
        try:
            yield
        finally:
            self._at_once = None

    @contextmanager
    def shielded(self) -> Iterator[None]:
        """Within the block (closing the session: saving a kept KV store), a stop signal is noted but
        does not interrupt, so a save is never cut short by a second Ctrl-C or a SIGTERM."""
        self._shielded = True
        try:
            yield
        finally:
            self._shielded = False

    @property
    def stopped(self) -> bool:
        return self.signum is not None

    @property
    def clean_stop(self) -> bool:
        """A stop signal ended the stream at a frame boundary (and no second one came)."""
        return self.signum is not None and not self.forced

    @property
    def name(self) -> str:
        """The first signal's name ('SIGTERM'), or '' when none came."""
        return "" if self.signum is None else signal.Signals(self.signum).name

    def frames(self, source: Iterable[T]) -> Iterator[T]:
        """`source`'s items until a stop is requested (checked before each item is taken)."""
        it = iter(source)
        try:
            while not self.event.is_set():
                try:
                    item = next(it)
                except StopIteration:
                    return
                yield item
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()

    def check(self, detail: str = "") -> None:
        """Raise Interrupted (with `detail` in its message) when a stop was requested: the stream ended early."""
        if self.signum is not None:
            raise Interrupted(self.signum, detail)
