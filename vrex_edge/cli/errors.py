"""How the CLI reports what a user can fix: one line on stderr and a non-zero exit, no traceback."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import typer

from vrex_edge.errors import VrexError


@contextmanager
def user_errors() -> Iterator[None]:
    """VrexError -> `error: <message>` on stderr + its exit code; Ctrl-C -> exit 130 without a traceback."""
    try:
        yield
    except VrexError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(e.exit_code) from None
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise typer.Exit(130) from None
