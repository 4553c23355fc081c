"""What every retrieval policy shares: the always-kept tokens, positions, attention and stats.

A policy keeps `sink` (the stream's first tokens) and the `recent` window (the last tokens) and
decides which of the older history a chunk sees. Subclasses implement `_retrieve` (write the
chosen history into the attention buffer) and `_absorb` (take the tokens leaving the window).

Keys are stored in one form chosen by the position mode: `absolute` stores keys rotated to
their stream positions (retrieved keys are used as they are; with everything kept this is
FullKV); `compact` stores un-rotated keys and rotates the attended set (sink, history in
stream order, recent, chunk) to contiguous positions 0..L-1 inside the trained range.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vrex_edge.bundle import TextSpec
from vrex_edge.errors import ConfigError
from vrex_edge.runtime import kernels
from vrex_edge.runtime.attention import attend_head
from vrex_edge.runtime.kvcache import LayerStats, Phase
from vrex_edge.runtime.retrieval.storage import AttentionBuffer
from vrex_edge.runtime.rope import Rope
from vrex_edge.scratch import work

POSITION_MODES = ("absolute", "compact")
TIMERS = ("cluster", "select", "gather", "attend")


@dataclass
class PhaseTotals:
    """Accumulated over every call of one phase on one layer."""

    calls: int = 0
    history: int = 0  # sum of stream tokens before each chunk
    kept: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # [KVH] sum of attended history
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(TIMERS, 0.0))

    def add(self, st: LayerStats) -> None:
        self.calls += 1
        self.history += st.history
        self.kept = st.kept.copy() if self.kept.size == 0 else self.kept + st.kept
        for k, v in st.seconds.items():
            self.seconds[k] = self.seconds.get(k, 0.0) + v

    def state(self) -> dict[str, Any]:
        return {"calls": self.calls, "history": self.history, "kept": self.kept, "seconds": dict(self.seconds)}

    @classmethod
    def from_state(cls, s: dict[str, Any]) -> PhaseTotals:
        return cls(int(s["calls"]), int(s["history"]), np.asarray(s["kept"], np.int64), dict(s["seconds"]))


class RopeTable:
    """cos/sin for positions 0..max_positions-1, so compact rotations are slices, not recomputations."""

    def __init__(self, rope: Rope, max_positions: int):
        self.cos, self.sin = rope.cos_sin(np.arange(max_positions))  # [P, hd]

    def rotate(self, x: np.ndarray, start: int, out: np.ndarray | None = None) -> np.ndarray:
        """x [..., L, hd] un-rotated -> rotated to positions start..start+L-1, into `out` if given
        (the attended set is rotated on every compact call: its temporary is a work array)."""
        L, half = x.shape[-2], x.shape[-1] // 2
        cos, sin = self.cos[start : start + L], self.sin[start : start + L]
        if out is None:
            out = np.empty(x.shape, np.result_type(x, cos))
        t = work("rotate", (*x.shape[:-1], half), out.dtype)
        np.multiply(x, cos, out=out)
        np.multiply(x[..., half:], sin[:, :half], out=t)
        np.subtract(out[..., :half], t, out=out[..., :half])
        np.multiply(x[..., :half], sin[:, half:], out=t)
        np.add(out[..., half:], t, out=out[..., half:])
        return out


class Ring:
    """The recent window: [KVH, cap, hd] buffers used as a FIFO (append at the end, pop the oldest)."""

    def __init__(self, kvh: int, hd: int, cap: int, aux: bool):
        self.kvh, self.hd = kvh, hd
        self.k = np.empty((kvh, cap, hd), np.float32)
        self.v = np.empty_like(self.k)
        self.aux = np.empty_like(self.k) if aux else None
        self.pos = np.empty(cap, np.int64)
        self.tag = np.empty(cap, np.int64)
        self.s = self.n = 0

    def _make_room(self, m: int) -> None:
        cap = self.k.shape[1]
        if self.s + self.n + m <= cap:
            return
        new_cap = max(cap, 2 * (self.n + m))
        for name in ("k", "v", "aux"):
            a = getattr(self, name)
            if a is not None:
                b = a if new_cap == cap else np.empty((self.kvh, new_cap, self.hd), np.float32)
                b[:, : self.n] = a[:, self.s : self.s + self.n].copy()
                setattr(self, name, b)
        for name in ("pos", "tag"):
            a = getattr(self, name)
            b = a if new_cap == cap else np.empty(new_cap, np.int64)
            b[: self.n] = a[self.s : self.s + self.n].copy()
            setattr(self, name, b)
        self.s = 0

    def append(self, k: np.ndarray, v: np.ndarray, aux: np.ndarray | None, pos: np.ndarray, tag: int) -> None:
        m = k.shape[1]
        self._make_room(m)
        e = self.s + self.n
        self.k[:, e : e + m] = k
        self.v[:, e : e + m] = v
        if self.aux is not None:
            self.aux[:, e : e + m] = aux
        self.pos[e : e + m] = pos
        self.tag[e : e + m] = tag
        self.n += m

    def state(self) -> dict[str, Any]:
        sl = slice(self.s, self.s + self.n)
        return {
            "k": self.k[:, sl],
            "v": self.v[:, sl],
            "aux": None if self.aux is None else self.aux[:, sl],
            "pos": self.pos[sl],
            "tag": self.tag[sl],
        }

    def restore(self, s: dict[str, Any]) -> None:
        self.s = self.n = 0
        if (s["aux"] is None) != (self.aux is None) or s["k"].shape[0] != self.kvh:
            raise ValueError("the recent window has another layout")
        self._make_room(s["k"].shape[1])
        m = s["k"].shape[1]
        self.k[:, :m], self.v[:, :m], self.pos[:m], self.tag[:m] = s["k"], s["v"], s["pos"], s["tag"]
        if self.aux is not None:
            self.aux[:, :m] = s["aux"]
        self.n = m

    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes + (0 if self.aux is None else self.aux.nbytes)

    def pop(self, m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray, np.ndarray]:
        """Remove the oldest m tokens -> copies of k, v, aux [KVH, m, hd], pos [m], tag [m]."""
        sl = slice(self.s, self.s + m)
        out = (
            self.k[:, sl].copy(),
            self.v[:, sl].copy(),
            None if self.aux is None else self.aux[:, sl].copy(),
            self.pos[sl].copy(),
            self.tag[sl].copy(),
        )
        self.s += m
        self.n -= m
        return out


class WindowedCache:
    """Base of the retrieval policies (see module docstring). Not a policy by itself.

    buffer: where each call's attended set is laid out (its storage's AttentionBuffer)."""

    def __init__(
        self,
        text: TextSpec,
        rope: Rope,
        *,
        sink: int,
        recent: int,
        positions: str,
        table: RopeTable | None,
        buffer: AttentionBuffer,
        aux: bool = False,
        absorb_batch: int = 1,
        engine: kernels.AttentionEngine | None = None,
    ):
        if positions not in POSITION_MODES:
            raise ConfigError(f"positions must be one of {', '.join(POSITION_MODES)} (got '{positions}')")
        if sink < 0 or recent < 0:
            raise ConfigError("sink and recent must be >= 0")
        self.h, self.kvh, self.hd = text.num_heads, text.num_kv_heads, text.head_dim
        self.g = self.h // self.kvh
        self.max_positions = text.max_positions
        self.rope, self.table = rope, table
        self.engine = engine or kernels.default_engine()  # runtime/kernels: chosen once, not per call
        self.compact = positions == "compact"
        self.sink, self.recent = sink, recent
        self.absorb_batch = max(1, absorb_batch)  # tokens leave the window in groups of at least this many
        self.sink_k = np.empty((self.kvh, sink, self.hd), np.float32)
        self.sink_v = np.empty_like(self.sink_k)
        self.sink_pos = np.empty(sink, np.int64)
        self.sink_n = 0
        self.ring = Ring(self.kvh, self.hd, 2 * recent + 64, aux)
        self.buffer = buffer  # k, v [KVH, cap, hd], pos [KVH, cap]: the attended set per head
        self.seen = 0
        self.phase: Phase = "prefill"  # of the call in progress
        self._stats = LayerStats()
        self.totals: dict[str, PhaseTotals] = {"prefill": PhaseTotals(), "decode": PhaseTotals()}

    @property
    def buf_k(self) -> np.ndarray:  # [KVH, cap, hd]
        return self.buffer.k

    @property
    def buf_v(self) -> np.ndarray:  # [KVH, cap, hd]
        return self.buffer.v

    @property
    def buf_pos(self) -> np.ndarray:  # [KVH, cap]
        return self.buffer.pos

    # ------------------------------------------------------------------ subclass hooks

    def _retrieve(self, q: np.ndarray, q_abs: np.ndarray, budget: int, sec: dict[str, float]) -> np.ndarray:
        """Write chosen history tokens into buf_k/buf_v/buf_pos[h, sink_n : sink_n + r[h]] -> r [KVH].

        q [H, n, hd] un-rotated, q_abs rotated to stream positions; at most `budget` tokens per head."""
        return np.zeros(self.kvh, np.int64)

    def _absorb(self, k: np.ndarray, v: np.ndarray, aux: np.ndarray | None, pos: np.ndarray, tag: np.ndarray) -> None:
        """Tokens leaving the recent window (k in storage form), oldest first."""

    def _aux(self, k: np.ndarray, k_abs: np.ndarray) -> np.ndarray | None:
        """The per-token keys the policy wants kept beside the storage form (None: none)."""
        return None

    def _tag(self, phase: Phase, n: int) -> int:
        return 0

    def _clusters(self) -> np.ndarray:
        return np.zeros(0, np.int64)

    def _history_nbytes(self) -> int:
        return 0

    # ------------------------------------------------------------------ helpers for subclasses

    def retrieve_budget(self, n: int) -> int:
        """Retrieved tokens per head that a chunk of n may attend beside sink and recent (compact:
        what fits the model's positions; absolute: the whole history)."""
        return self.max_positions - self.sink_n - self.ring.n - n if self.compact else self.seen

    def reserve(self, retrieved: int) -> None:
        """Make buf_* hold sink + `retrieved` + recent tokens per head."""
        self.buffer.reserve(self.sink_n + retrieved + self.ring.n)

    # ------------------------------------------------------------------ LayerCache API

    def attend(self, q: np.ndarray, k: np.ndarray, v: np.ndarray, positions: np.ndarray, *, phase: Phase) -> np.ndarray:
        sec = dict.fromkeys(TIMERS, 0.0)
        self.phase = phase
        t0 = time.perf_counter()
        n = q.shape[1]
        positions = np.asarray(positions, dtype=np.int64)
        q_abs = self.rope.apply(q, positions)  # [H, n, hd]
        k_abs = self.rope.apply(k, positions)  # [KVH, n, hd]
        base = self.sink_n + self.ring.n
        budget = self.retrieve_budget(n)
        if budget < 0:
            raise ConfigError(
                f"sink + recent + chunk ({base + n} tokens) exceed the model's "
                f"{self.max_positions} positions; lower --recent or the chunk size"
            )
        sec["attend"] += time.perf_counter() - t0
        self.reserve(0)
        r = self._retrieve(q, q_abs, budget, sec)  # [KVH]
        t1 = time.perf_counter()
        lens = self._assemble(r)  # [KVH]
        t2 = time.perf_counter()
        sec["gather"] += t2 - t1
        out = self._attention(q, q_abs, k, k_abs, v, lens)  # [n, H*hd]
        t3 = time.perf_counter()
        sec["attend"] += t3 - t2
        self._push(k if self.compact else k_abs, v, self._aux(k, k_abs), positions, self._tag(phase, n))
        sec["cluster"] += time.perf_counter() - t3
        hist = self.seen - n
        self._stats = LayerStats(history=hist, kept=lens.astype(np.int64), seconds=sec, clusters=self._clusters())
        self.totals[phase].add(self._stats)
        return out

    def _assemble(self, r: np.ndarray) -> np.ndarray:
        """Put sink before and the recent window after each head's retrieved tokens -> lengths [KVH]."""
        s, w = self.sink_n, self.ring.n
        rs = slice(self.ring.s, self.ring.s + w)
        self.buf_k[:, :s] = self.sink_k[:, :s]
        self.buf_v[:, :s] = self.sink_v[:, :s]
        for h in range(self.kvh):
            e = s + int(r[h])
            if self.compact and r[h] > 1:  # retrieved tokens in stream order
                o = np.argsort(self.buf_pos[h, s:e], kind="stable")
                t = work("assemble", (e - s, self.hd))
                for buf in (self.buf_k, self.buf_v):
                    np.take(buf[h, s:e], o, axis=0, out=t, mode="clip")  # "raise" buffers out
                    buf[h, s:e] = t
            self.buf_k[h, e : e + w] = self.ring.k[h, rs]
            self.buf_v[h, e : e + w] = self.ring.v[h, rs]
        return s + r + w

    def _attention(self, q, q_abs, k, k_abs, v, lens) -> np.ndarray:
        n = q.shape[1]
        if not self.compact:  # one kernel call; head h attends to buf_k[h, :lens[h]]
            segs = [kernels.Segment(self.buf_k, self.buf_v, lens)]
            o = self.engine.attend(q_abs.reshape(self.kvh, self.g, n, self.hd), segs, k_abs, v)
        else:  # compact: the attended set and the chunk at positions 0..L+n-1, per head
            o = np.empty((self.kvh, self.g, n, self.hd), np.float32)
            qg = q.reshape(self.kvh, self.g, n, self.hd)
            for h in range(self.kvh):
                L = int(lens[h])
                kh = self.table.rotate(self.buf_k[h, :L], 0, out=work("compact.k", (L, self.hd)))
                o[h] = attend_head(self.table.rotate(qg[h], L), kh, self.buf_v[h, :L], self.table.rotate(k[h], L), v[h])
        return o.reshape(self.h, n, self.hd).transpose(1, 0, 2).reshape(n, self.h * self.hd)

    def _push(self, k: np.ndarray, v: np.ndarray, aux: np.ndarray | None, pos: np.ndarray, tag: int) -> None:
        n = k.shape[1]
        to_sink = min(n, self.sink - self.sink_n)
        if to_sink:
            s = self.sink_n
            self.sink_k[:, s : s + to_sink] = k[:, :to_sink]
            self.sink_v[:, s : s + to_sink] = v[:, :to_sink]
            self.sink_pos[s : s + to_sink] = pos[:to_sink]
            self.sink_n += to_sink
        if to_sink < n:
            self.ring.append(
                k[:, to_sink:], v[:, to_sink:], None if aux is None else aux[:, to_sink:], pos[to_sink:], tag
            )
        over = self.ring.n - self.recent
        if over >= self.absorb_batch:  # the window holds recent .. recent + absorb_batch - 1 tokens
            self._absorb(*self.ring.pop(over))
        self.seen += n

    def extend(self, k: np.ndarray, v: np.ndarray, positions: np.ndarray, *, chunk: int) -> None:
        """Append k/v [KVH, N, hd] (un-rotated) without attending, as chunks of `chunk` prefill tokens.

        Warm-up for benchmarks and tools: the same state as attending the chunks, minus the outputs."""
        positions = np.asarray(positions, dtype=np.int64)
        k_abs = self.rope.apply(k, positions)
        for s in range(0, k.shape[1], chunk):
            sl = slice(s, s + chunk)
            self._push(
                k[:, sl] if self.compact else k_abs[:, sl],
                v[:, sl],
                self._aux(k[:, sl], k_abs[:, sl]),
                positions[sl],
                self._tag("prefill", k[:, sl].shape[1]),
            )

    @property
    def length(self) -> int:
        return self.seen

    def window_nbytes(self) -> int:
        """The sink and the recent window (always resident)."""
        return self.sink_k.nbytes + self.sink_v.nbytes + self.ring.nbytes()

    def nbytes(self) -> int:
        return self.window_nbytes() + self.buf_k.nbytes + self.buf_v.nbytes + self._history_nbytes()

    def stats(self) -> LayerStats:
        return self._stats

    # ------------------------------------------------------------------ declared state

    def state(self) -> dict[str, Any]:
        """What a resumed stream needs of this layer: sink, recent window, counters, totals, and the
        policy's history (`_history_state`). The attention buffer is scratch: it is not saved."""
        s = self.sink_n
        return {
            "sink_k": self.sink_k[:, :s],
            "sink_v": self.sink_v[:, :s],
            "sink_pos": self.sink_pos[:s],
            "seen": self.seen,
            "ring": self.ring.state(),
            "totals": {k: t.state() for k, t in self.totals.items()},
            "history": self._history_state(),
        }

    def restore(self, s: dict[str, Any]) -> None:
        n = s["sink_k"].shape[1]
        if n > self.sink or s["sink_k"].shape[0] != self.kvh:
            raise ValueError("the sink has another layout")
        self.sink_k[:, :n], self.sink_v[:, :n], self.sink_pos[:n] = s["sink_k"], s["sink_v"], s["sink_pos"]
        self.sink_n, self.seen = n, int(s["seen"])
        self.ring.restore(s["ring"])
        self.totals = {k: PhaseTotals.from_state(t) for k, t in s["totals"].items()}
        self._restore_history(s["history"])

    def _history_state(self) -> dict[str, Any]:
        return {}

    def _restore_history(self, s: dict[str, Any]) -> None:
        """Subclasses that keep history restore it here."""
