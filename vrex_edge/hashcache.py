"""Verified file hashes, cached so that a bundle is hashed once, not on every start.

`$XDG_CACHE_HOME/vrex-edge/hashes.json` maps a file's absolute path to its size, mtime_ns,
ctime_ns, inode and the sha256 it was verified against. A file whose stat still matches is not
hashed again; any change (an edit, a copy, touch) re-hashes it. The cache is an optimisation
only: a missing, damaged or unwritable cache means hashing again, never an error.
`vrex-edge info --verify` ignores it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

VERSION = 1


def cache_file() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "vrex-edge" / "hashes.json"


def _key(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


class HashCache:
    """`verified(path, digest)` -> True when `path` was verified against `digest` and has not changed since."""

    def __init__(self, path: Path | None = None):
        self.path = path or cache_file()
        self.entries: dict[str, list] = {}
        self.dirty = False
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
            if isinstance(doc, dict) and doc.get("version") == VERSION and isinstance(doc.get("files"), dict):
                self.entries = doc["files"]
        except (OSError, ValueError):
            pass

    def verified(self, path: Path, digest: str) -> bool:
        try:
            st = path.stat()
        except OSError:
            return False
        entry = self.entries.get(str(path.resolve()))
        return isinstance(entry, list) and entry == [*_key(st), digest]

    def record(self, path: Path, digest: str) -> None:
        """Remember that `path`, as it is now, matched `digest`."""
        try:
            self.entries[str(path.resolve())] = [*_key(path.stat()), digest]
            self.dirty = True
        except OSError:
            pass

    def save(self) -> None:
        """Write the cache atomically (dropping files that no longer exist); failures are ignored."""
        if not self.dirty:
            return
        files = {p: e for p, e in self.entries.items() if os.path.exists(p)}
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps({"version": VERSION, "files": files}), encoding="utf-8")
            os.replace(tmp, self.path)
            self.dirty = False
        except OSError:
            try:
                tmp.unlink()
            except OSError:
                pass
