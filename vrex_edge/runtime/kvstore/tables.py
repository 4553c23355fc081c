"""Retired cluster representatives on the cold tier (resv option `fine`).

A ClusterStore with `fine` > 0 keeps resident representatives for its newest clusters only; older
ones retire in blocks whose coarse representative stays resident while the fine ones come here.
One file per layer and KV head; block j of head h sits at offset j * block * hd * 4, so no index
is needed and a run of kept neighbouring blocks is one read. The files live in the session's store
folder, so `--keep-kv` keeps them and `--resume` reopens them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from vrex_edge.errors import KVStoreError
from vrex_edge.runtime.kvstore.cold import write_all
from vrex_edge.runtime.kvstore.config import Writer


class FileArchive:
    def __init__(
        self,
        folder: Path,
        layer: int,
        kvh: int,
        block: int,
        hd: int,
        write: Callable[[Callable[[], None]], None],
        pwrite: Writer = os.pwrite,
    ):
        self.block, self.hd = block, hd
        self.rec = block * hd * 4  # bytes of one block of one head
        self.write = write  # the tier manager's write path (disk full -> drop-oldest or a clean error)
        self.pwrite = pwrite
        self.paths = [folder / f"L{layer:03d}.h{h}.reps" for h in range(kvh)]
        self.fds = [os.open(p, os.O_RDWR | os.O_CREAT, 0o600) for p in self.paths]
        self.reads = 0
        self.read_bytes = 0
        self.seconds = 0.0

    def put(self, h: int, j: int, fine: np.ndarray) -> None:
        """Block j of head h: fine representatives [block, hd]."""
        rows = np.asarray(fine, np.float32)
        self.write(lambda: write_all(self.pwrite, self.fds[h], rows, j * self.rec))

    def get(self, h: int, blocks: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """-> [len(blocks), block, hd] fine representatives of head h (blocks ascending), read into
        `out` (C-contiguous f32) when given."""
        t0 = time.perf_counter()
        if out is None:
            out = np.empty((blocks.size, self.block, self.hd), np.float32)
        cuts = np.flatnonzero(np.diff(blocks) != 1) + 1
        for a, b in zip(np.r_[0, cuts].tolist(), np.r_[cuts, blocks.size].tolist(), strict=True):
            want = (b - a) * self.rec
            got = os.preadv(self.fds[h], [out[a:b]], int(blocks[a]) * self.rec)
            if got != want:
                raise KVStoreError(
                    f"the KV store file {self.paths[h]} is truncated ({got} of {want} bytes); "
                    "it was changed outside vrex-edge"
                )
            self.reads += 1
        self.read_bytes += out.nbytes
        self.seconds += time.perf_counter() - t0
        return out

    def check(self, blocks: np.ndarray) -> None:
        """A resumed store must hold blocks[h] blocks of head h."""
        for p, n in zip(self.paths, blocks.tolist(), strict=True):
            if not p.is_file() or p.stat().st_size < n * self.rec:
                raise KVStoreError(f"the kept KV store is incomplete: {p} is missing or truncated")

    def nbytes(self) -> int:
        return 0  # on disk: nothing resident

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds = []
