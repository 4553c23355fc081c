"""The cold tier: one append-only log per layer, token records [k | v | pos], segment files.

A sealed batch of one KV head is written once, grouped by cluster, so a cluster (and a run of
clusters sealed together) is one contiguous range of rows: one `preadv` brings it back,
scattered straight into per-cluster arrays. Rows are addressed globally per layer; a new
segment starts one row after the previous one ends, so no merged run ever spans two files, and
the oldest segment can be deleted to free space (on_full='drop-oldest').
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vrex_edge.errors import KVStoreError
from vrex_edge.runtime.kvstore.config import Writer

FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
IOV_MAX = 512  # buffers per preadv call (Linux allows 1024)
_HINT = hasattr(os, "posix_fadvise")  # not on macOS


@dataclass
class Segment:
    base: int  # first global row
    rows: int  # rows written
    path: Path
    fd: int = -1


def _pwrite(fd: int, data: memoryview, off: int) -> int:
    return os.pwrite(fd, data, off)


def write_all(write: Writer, fd: int, array: np.ndarray, off: int) -> None:
    """Write an array's bytes at `off` through `write` (os.pwrite's signature), retrying short writes."""
    data = memoryview(np.ascontiguousarray(array)).cast("B")
    while data:
        n = write(fd, data, off)
        if n <= 0:
            raise OSError(errno.EIO, "short write")
        data, off = data[n:], off + n


class ColdLog:
    """Layer `layer`'s cold rows. rec = 2*hd + 2 float32 words: k [hd], v [hd], pos (int64)."""

    def __init__(self, folder: Path, layer: int, hd: int, *, segment_bytes: int, writer: Writer | None):
        self.folder, self.layer, self.hd = folder, layer, hd
        self.rec = 2 * hd + 2
        self.row_bytes = 4 * self.rec
        self.segment_rows = max(1, segment_bytes // self.row_bytes)
        self.write_fn = writer or _pwrite
        self.segments: list[Segment] = []
        self.written = 0  # bytes ever written (stats)

    # ------------------------------------------------------------------ layout

    def record(self, k: np.ndarray, v: np.ndarray, pos: np.ndarray) -> np.ndarray:
        """k, v [m, hd], pos [m] -> records [m, rec] f32."""
        m, hd = k.shape
        rec = np.empty((m, self.rec), np.float32)
        rec[:, :hd], rec[:, hd : 2 * hd] = k, v
        rec[:, 2 * hd :].view(np.int64)[:, 0] = pos
        return rec

    def _open(self, base: int) -> Segment:
        path = self.folder / f"L{self.layer:03d}.{len(self.segments) + self._dropped:06d}.kv"
        seg = Segment(base, 0, path)
        seg.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        self.segments.append(seg)
        return seg

    _dropped = 0

    @property
    def next_row(self) -> int:
        return self.segments[-1].base + self.segments[-1].rows if self.segments else 0

    # ------------------------------------------------------------------ write / read

    def append(self, rec: np.ndarray) -> int:
        """Write records [m, rec] contiguously -> their first global row. OSError escapes (the
        manager decides between dropping old segments and ending the session)."""
        m = rec.shape[0]
        seg = self.segments[-1] if self.segments else None
        if seg is None or (seg.rows and seg.rows + m > self.segment_rows):
            seg = self._open(0 if seg is None else seg.base + seg.rows + 1)  # +1: runs never span files
        write_all(self.write_fn, seg.fd, rec, seg.rows * self.row_bytes)
        start = seg.base + seg.rows
        seg.rows += m
        self.written += m * self.row_bytes
        return start

    def read(self, row: int, bufs: list[np.ndarray]) -> int:
        """Fill bufs (each [cnt, rec] f32, contiguous) from consecutive rows starting at `row` -> bytes."""
        seg = self._find(row)
        want = sum(b.nbytes for b in bufs)
        got = os.preadv(seg.fd, bufs, (row - seg.base) * self.row_bytes)
        if got != want:
            raise KVStoreError(
                f"the KV store file {seg.path} is truncated ({got} of {want} bytes); it was changed outside vrex-edge"
            )
        return got

    def read_runs(self, rows: np.ndarray, bufs: list[np.ndarray], junk: np.ndarray | None = None) -> int:
        """Fill bufs[i] (each [cnt_i, rec] f32, contiguous) from rows[i] on (sorted, not overlapping)
        -> bytes read into bufs. Records at most junk.nbytes of unselected rows apart (in one segment)
        go in one preadv, the rows between landing in `junk` (it may come several times in one call
        and be shared by threads: what it holds is never used). With several calls, the kernel hears
        of them all first (POSIX_FADV_WILLNEED), so the device gets them at once instead of one ~5 KB
        read at a time (the exact path's misses are latency-bound random reads)."""
        if not bufs:
            return 0
        rb = self.row_bytes
        rows = np.asarray(rows, np.int64)
        cnt = np.array([b.shape[0] for b in bufs], np.int64)
        seg = np.searchsorted(np.array([s.base for s in self.segments], np.int64), rows, side="right") - 1
        gap = (rows[1:] - rows[:-1] - cnt[:-1]).tolist()  # rows between record i and i + 1
        room = 0 if junk is None else junk.nbytes // rb
        same = (seg[1:] == seg[:-1]).tolist()
        calls: list[tuple[int, list[np.ndarray]]] = []  # (first row, buffers) per preadv
        first, iov = 0, [bufs[0]]
        for i in range(1, len(bufs)):
            g = gap[i - 1]
            if g > room or not same[i - 1] or len(iov) + 2 > IOV_MAX:
                calls.append((int(rows[first]), iov))
                first, iov = i, [bufs[i]]
                continue
            if g:
                iov.append(junk[: g * rb])  # type: ignore[index]
            iov.append(bufs[i])
        calls.append((int(rows[first]), iov))
        if len(calls) > 1 and _HINT:
            for row, iov in calls:
                s = self._find(row)
                try:
                    os.posix_fadvise(s.fd, (row - s.base) * rb, sum(x.nbytes for x in iov), os.POSIX_FADV_WILLNEED)
                except OSError:  # only a hint
                    break
        for row, iov in calls:
            self.read(row, iov)
        return int(cnt.sum()) * rb

    def _find(self, row: int) -> Segment:
        for seg in reversed(self.segments):
            if seg.base <= row < seg.base + seg.rows:
                return seg
        raise KVStoreError(f"row {row} of layer {self.layer} is not in the KV store (dropped or missing)")

    # ------------------------------------------------------------------ maintenance

    def drop_oldest(self) -> tuple[int, int] | None:
        """Delete the oldest segment (never the one being written) -> its row range, or None."""
        if len(self.segments) < 2:
            return None
        seg = self.segments.pop(0)
        self._dropped += 1
        os.close(seg.fd)
        seg.path.unlink(missing_ok=True)
        return seg.base, seg.base + seg.rows

    def sync(self) -> None:
        for seg in self.segments:
            os.fsync(seg.fd)

    def drop_page_cache(self) -> None:
        """Flush and ask the OS to forget cached pages (benchmarks: make reads hit the device)."""
        for seg in self.segments:
            os.fsync(seg.fd)
            os.posix_fadvise(seg.fd, 0, 0, os.POSIX_FADV_DONTNEED)

    def close(self) -> None:
        for seg in self.segments:
            if seg.fd >= 0:
                os.close(seg.fd)
                seg.fd = -1

    def state(self) -> dict:
        return {"segments": [[s.base, s.rows, s.path.name] for s in self.segments], "dropped": self._dropped}

    def restore(self, state: dict) -> None:
        self._dropped = int(state["dropped"])
        for base, rows, name in state["segments"]:
            path = self.folder / name
            if not path.is_file() or path.stat().st_size < rows * self.row_bytes:
                raise KVStoreError(f"the kept KV store is incomplete: {path} is missing or truncated")
            seg = Segment(int(base), int(rows), path)
            seg.fd = os.open(path, os.O_RDWR)
            self.segments.append(seg)
