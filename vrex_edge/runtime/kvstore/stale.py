"""Temporary KV stores of dead runs.

Each temporary store (`<cache>/vrex-edge/kv/session-*`) holds an `owner` marker with its run's
pid and host; the run keeps the marker locked while it lives. A later run removes the stores
whose run is provably gone (same host, no such pid, lock free: see vrex_edge/liveness.py).
Stores without a marker (older versions) or of another host are left alone.
"""

from __future__ import annotations

import json
import os
import shutil
import weakref
from pathlib import Path

from vrex_edge.liveness import hold_lock, host, pid_alive, unlocked

MARKER = "owner"
PREFIX = "session-"


def claim(folder: Path, owner: object) -> Path:
    """Write `folder`'s owner marker and hold its lock for as long as `owner` lives -> folder."""
    fd = os.open(folder / MARKER, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, json.dumps({"pid": os.getpid(), "host": host()}).encode())
        hold_lock(fd)
    except BaseException:
        os.close(fd)
        raise
    weakref.finalize(owner, os.close, fd)
    return folder


def dead(folder: Path) -> bool:
    """True when `folder`'s marker proves its run is gone."""
    marker = folder / MARKER
    try:
        info = json.loads(marker.read_text(encoding="utf-8"))
        pid, where = int(info["pid"]), info["host"]
    except (OSError, ValueError, KeyError, TypeError):
        return False  # no marker yet (being created), an older store, or unreadable: cannot prove
    return where == host() and not pid_alive(pid) and unlocked(marker)


def sweep(root: Path) -> list[Path]:
    """Remove the temporary stores under `root` whose runs are dead -> the folders removed."""
    removed = []
    try:
        folders = [p for p in root.iterdir() if p.name.startswith(PREFIX) and p.is_dir()]
    except OSError:
        return removed
    for folder in folders:
        if dead(folder):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed
