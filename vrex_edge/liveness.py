"""Proof that a temporary file's or folder's owner is gone, so a later run may remove it.

An owner holds an exclusive `flock` on a file for as long as it lives (the kernel drops it when
the process dies, kill -9 included) and writes its pid where others can read it. Something is
stale only when both say so: nobody holds the lock and no process with that pid exists on this
host. Anything that cannot be proved dead (another host, an unreadable marker, a pid that was
reused) is left alone.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket


def pid_alive(pid: int) -> bool:
    """True when a process with this pid exists (or may exist: we cannot signal it)."""
    if pid <= 0:
        return True  # not a pid we wrote: assume alive
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def hold_lock(fd: int) -> None:
    """Mark `fd`'s file as in use by this process (released when the fd closes or the process dies)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        pass  # a file system without flock: the pid check alone protects the file


def unlocked(path: str | os.PathLike[str]) -> bool:
    """True when nobody holds `path`'s lock (False when it cannot be opened or is locked)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        return e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)
    finally:
        os.close(fd)  # releases the lock we may have taken
    return True


def host() -> str:
    return socket.gethostname()
