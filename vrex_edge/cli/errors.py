"""How the CLI reports what a user can fix: one line on stderr and a non-zero exit, no traceback."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import typer

from vrex_edge.errors import VrexError


@contextmanager
def user_errors() -> Iterator[None]:
    """VrexError -> `error: <message>` on stderr + its exit code; a stop signal -> 128 + its number,
    without a traceback; stdout's reader gone (`| head -1`) -> quietly 128 + SIGPIPE, as a Unix tool."""
    try:
        yield
    except BrokenPipeError:
        quiet_stdout()
        raise typer.Exit(128 + signal.SIGPIPE) from None
    except VrexError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(e.exit_code) from None
    except KeyboardInterrupt as e:  # signals.Interrupted says which signal and where; exit 128 + signal
        typer.echo(str(e) or "interrupted", err=True)
        raise typer.Exit(getattr(e, "exit_code", 130)) from None


def quiet_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's last flush finds no closed pipe to report."""
    try:
        fd = os.open(os.devnull, os.O_WRONLY)
        os.dup2(fd, sys.stdout.fileno())
        os.close(fd)
    except (OSError, ValueError):  # no real stdout (tests capture it)
        pass
