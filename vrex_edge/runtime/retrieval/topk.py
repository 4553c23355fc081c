"""`topk`: ReKV-style block retrieval, the fixed-budget baseline (docs/resv-spec.md, "Baselines").

One block per prefill chunk (a frame); consecutive decode tokens share a block of up to
`decode_block` tokens. A block's representative is the mean pre-RoPE key over its tokens and
KV heads; the chunk's mean pre-RoPE query scores the blocks and the top `k` blocks (a count,
or a fraction of the blocks when 0 < k <= 1.0 is a float) are attended by every head.
History is stored in stream order, so a block is one contiguous slice.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from vrex_edge.accel import backend_names
from vrex_edge.bundle import TextSpec
from vrex_edge.errors import AccelError, ConfigError
from vrex_edge.runtime.arrays import grow
from vrex_edge.runtime.kvcache import Phase
from vrex_edge.runtime.retrieval.base import POSITION_MODES, WindowedCache
from vrex_edge.runtime.retrieval.options import WindowedOptions, opt
from vrex_edge.runtime.retrieval.policy import Policy, PolicySpec
from vrex_edge.runtime.retrieval.storage import KVStorage, runs_to_index
from vrex_edge.runtime.rope import Rope

BLOCK_TABLES = ("bstart", "bcount", "bsum", "btag")


@dataclass(frozen=True)
class TopKOptions(WindowedOptions):
    policy = "topk"
    k: int | float = opt(0.2, lo=0, lo_open=True, help="blocks kept: a count (64) or a fraction of them (0.2)")
    decode_block: int = opt(10, lo=1, help="decode tokens per block")
    positions: str = opt("absolute", choices=POSITION_MODES, help="absolute stream positions or compact 0..L-1")
    accel: str = opt("host", help="retrieval backend for the layout (vrex-edge accel list)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.k, float) and self.k > 1:
            raise ConfigError(f"topk: option k must be a block count >= 1 or a fraction in (0, 1.0], got {self.k!r}")
        if self.accel not in backend_names():
            raise AccelError(f"unknown retrieval backend '{self.accel}' (available: {', '.join(backend_names())})")


class TopKCache(WindowedCache):
    def __init__(self, layer: int, text: TextSpec, rope: Rope, o: TopKOptions, *, policy: Policy, storage: KVStorage):
        compact = o.positions == "compact"
        super().__init__(
            text,
            rope,
            sink=o.sink,
            recent=o.recent,
            positions=o.positions,
            table=policy.rope_table(rope, text) if compact else None,
            buffer=storage.buffer(layer, text.num_kv_heads, text.head_dim, keeps_rows=False),
            aux=not compact,
            engine=policy.engine,
        )  # aux: the pre-RoPE keys beside rotated storage
        self.k_opt = o.k
        self.decode_block = o.decode_block
        self.backend = policy.backend
        self.ak = np.empty((self.kvh, 1024, self.hd), np.float32)  # [KVH, cap, hd] history, stream order
        self.av = np.empty_like(self.ak)
        self.apos = np.empty(1024, np.int64)
        self.an = 0
        # per block (the first nb entries): first arena row, token count, key sum [hd], tag
        self.bstart = np.zeros(64, np.int64)
        self.bcount = np.zeros(64, np.int64)
        self.bsum = np.zeros((64, self.hd), np.float64)
        self.btag = np.zeros(64, np.int64)
        self.nb = 0
        self._next_tag, self._decode_fill = 0, 0

    def _aux(self, k: np.ndarray, k_abs: np.ndarray) -> np.ndarray | None:
        return None if self.compact else k

    def _tag(self, phase: Phase, n: int) -> int:
        if phase == "decode" and 0 < self._decode_fill < self.decode_block:
            self._decode_fill += n
            return self._next_tag - 1
        self._decode_fill = n if phase == "decode" else 0
        self._next_tag += 1
        return self._next_tag - 1

    def _absorb(self, k, v, aux, pos, tag) -> None:
        m = k.shape[1]
        s = self.an
        self._absorb_rows(k, v, pos)
        keys = (k if aux is None else aux).sum(0, dtype=np.float64)  # [m, hd] summed over KV heads
        tags, first = np.unique(tag, return_index=True)  # tags are non-decreasing
        counts = np.diff(np.append(first, m))
        sums = np.add.reduceat(keys, first, axis=0)  # [t, hd]
        nb = self.nb
        if nb and tags[0] == self.btag[nb - 1]:  # the last block continues
            self.bcount[nb - 1] += counts[0]
            self.bsum[nb - 1] += sums[0]
            tags, first, counts, sums = tags[1:], first[1:], counts[1:], sums[1:]
        e = nb + tags.size
        for name in BLOCK_TABLES:  # amortised: doubling, not one reallocation per absorb
            setattr(self, name, grow(getattr(self, name), e, used=nb, fill=0))
        self.bstart[nb:e], self.bcount[nb:e], self.bsum[nb:e], self.btag[nb:e] = s + first, counts, sums, tags
        self.nb = e

    def _history_nbytes(self) -> int:
        return self.ak.nbytes + self.av.nbytes + self.apos.nbytes + self.bsum.nbytes

    def _history_state(self) -> dict[str, Any]:
        n, nb = self.an, self.nb
        return {
            "ak": self.ak[:, :n],
            "av": self.av[:, :n],
            "apos": self.apos[:n],
            **{name: getattr(self, name)[:nb] for name in BLOCK_TABLES},
            "next_tag": self._next_tag,
            "decode_fill": self._decode_fill,
        }

    def _restore_history(self, s: dict[str, Any]) -> None:
        self.an = 0
        self._absorb_rows(s["ak"], s["av"], s["apos"])
        self.nb = 0
        nb = s["bcount"].shape[0]
        for name in BLOCK_TABLES:
            setattr(self, name, grow(getattr(self, name), nb, used=0, fill=0))
            getattr(self, name)[:nb] = s[name]
        self.nb = nb
        self._next_tag, self._decode_fill = int(s["next_tag"]), int(s["decode_fill"])

    def _absorb_rows(self, k: np.ndarray, v: np.ndarray, pos: np.ndarray) -> None:
        m = k.shape[1]
        self.ak = grow(self.ak, self.an + m, axis=1, used=self.an)
        self.av = grow(self.av, self.an + m, axis=1, used=self.an)
        self.apos = grow(self.apos, self.an + m, used=self.an)
        self.ak[:, self.an : self.an + m], self.av[:, self.an : self.an + m], self.apos[self.an : self.an + m] = (
            k,
            v,
            pos,
        )
        self.an += m

    def _top_blocks(self, q: np.ndarray) -> np.ndarray:
        """The k best blocks (of nb > 0) for the chunk's mean query, best first."""
        nb, k = self.nb, self.k_opt
        kb = math.ceil(k * nb) if isinstance(k, float) else int(k)
        if kb >= nb:
            return np.arange(nb)
        reps = self.bsum[:nb] / (self.bcount[:nb, None] * self.kvh)  # [B, hd]
        score = reps @ q.reshape(-1, self.hd).mean(0, dtype=np.float64)  # [B]
        top = np.argpartition(-score, kb - 1)[:kb]
        return top[np.argsort(-score[top], kind="stable")]

    def _retrieve(self, q: np.ndarray, q_abs: np.ndarray, budget: int, sec: dict[str, float]) -> np.ndarray:
        if self.nb == 0:
            return np.zeros(self.kvh, np.int64)
        t0 = time.perf_counter()
        top = self._top_blocks(q)
        tok = np.cumsum(self.bcount[top])
        if tok[-1] > budget:  # compact positions: keep the best blocks that fit
            top = top[: int(np.searchsorted(tok, budget, side="right"))]
        t1 = time.perf_counter()
        sec["select"] += t1 - t0
        runs = self.backend.layout(top, self.bstart, self.bcount)
        idx = runs_to_index(runs)
        r = idx.size
        self.reserve(r)
        s = self.sink_n
        for h in range(self.kvh):
            np.take(self.ak[h], idx, axis=0, out=self.buf_k[h, s : s + r], mode="clip")
            np.take(self.av[h], idx, axis=0, out=self.buf_v[h, s : s + r], mode="clip")
            if self.compact:
                self.buf_pos[h, s : s + r] = self.apos[idx]
        sec["gather"] += time.perf_counter() - t1
        return np.full(self.kvh, r, np.int64)


def _build(policy: Policy, layer: int, text: TextSpec, rope: Rope, storage: KVStorage) -> TopKCache:
    assert isinstance(policy.options, TopKOptions)
    # KV and attention on the GPU, block tables on the host (retrieval/device.py); compact positions stay on the host
    if policy.device == "cuda" and policy.options.positions != "compact":
        from vrex_edge.runtime.retrieval.device import DeviceTopKKV

        return DeviceTopKKV(
            layer, text, rope, policy.options, policy=policy, engine=policy.device_engine, storage=storage
        )
    return TopKCache(layer, text, rope, policy.options, policy=policy, storage=storage)


SPEC = PolicySpec("topk", TopKOptions, _build, "top-k frame blocks by mean key (ReKV-style, fixed budget)")
