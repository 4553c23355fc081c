"""Tier options and byte sizes (KVStoreError lives in vrex_edge.errors; re-exported here)."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vrex_edge.errors import ConfigError, KVStoreError

ON_FULL = ("error", "drop-oldest")
__all__ = ["KVStoreError", "TierConfig", "Writer", "default_root", "parse_bytes"]
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}

# A writer is os.pwrite's signature: (fd, data, offset) -> bytes written. Tests inject failing ones.
Writer = Callable[[int, memoryview, int], int]


def parse_bytes(text: str | int) -> int:
    """'512M', '2G', '1.5GiB', '4096' -> bytes (binary units)."""
    if isinstance(text, int):
        n = text
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)(i?b)?\s*", str(text).lower())
        if m is None:
            raise ConfigError(f"--kv-budget expects a size like 512M or 2G (got {text!r})")
        n = int(float(m.group(1)) * _UNITS[m.group(2)])
    if n <= 0:
        raise ConfigError(f"--kv-budget must be positive (got {text!r})")
    return n


def default_root() -> Path:
    """Where temporary stores go: $XDG_CACHE_HOME/vrex-edge/kv (a disk, not a tmpfs)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "vrex-edge" / "kv"


@dataclass(frozen=True)
class TierConfig:
    """budget: resident KV bytes (None: unbounded); keep: keep the store (and a resume state) in
    this folder; resume: continue the stream kept in this folder (it stays kept there);
    on_full: what a full disk does ('error' ends the session, 'drop-oldest' forgets the oldest
    clusters); prefetch: layer-pipelined prefetch; root: parent of temporary stores."""

    budget: int | None = None
    keep: Path | None = None
    resume: Path | None = None
    on_full: str = "error"
    prefetch: bool = True
    root: Path | None = None
    segment_bytes: int = 64 << 20
    writer: Writer | None = None  # None: os.pwrite

    def __post_init__(self) -> None:
        if self.on_full not in ON_FULL:
            raise ConfigError(f"--kv-on-full must be one of {', '.join(ON_FULL)} (got '{self.on_full}')")
        if (
            self.keep is not None
            and self.resume is not None
            and Path(self.keep).resolve() != Path(self.resume).resolve()
        ):
            raise ConfigError(
                "--resume continues the store in its own folder; give the same folder to --keep-kv or omit it"
            )

    @property
    def folder(self) -> Path | None:
        """The kept folder (resume implies keeping it), or None for a temporary store."""
        p = self.resume if self.resume is not None else self.keep
        return None if p is None else Path(p)
