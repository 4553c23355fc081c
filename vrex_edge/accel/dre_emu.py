"""`dre-emu`: a bit-level emulator of the Dynamic Retrieval Engine's datapath with a cycle model.

The units work on the integer formats of `fixed.py` (docs/dre.md) and must select exactly what
that reference selects. They are vectorised differently from the reference: integer dot
products run as float GEMMs whose partial sums stay below the mantissa (2^24 for f32, 2^53 for
f64), so every partial sum is an exact integer; a leading-one detector is `frexp`; WiCSum is a
bucket sort by exponent that stops at the first bucket crossing the goal. Integer sums do not
depend on the order of accumulation, so the lane counts change cycles, never bits.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from vrex_edge.accel import fixed as fx
from vrex_edge.accel.host import pack_bits, popcount

_FAR = 1 << 40
BUCKETS = 48  # exponent buckets of a cluster mass (< 2^47): bit length 0 (zero) .. 47


@dataclass(frozen=True)
class CycleModel:
    """Cycle costs of the DRE's units (docs/dre.md section 3); defaults sized like the paper's engine."""

    clock_hz: float = 800e6
    hash_lanes: int = 32  # plane adder trees (hd-input add/subtract trees): bits per cycle per key
    hash_latency: int = 8  # adder-tree depth + sign/pack, once per call
    cmp_lanes: int = 16  # XOR + popcount comparators: candidates compared per cycle
    assign_cycles: int = 3  # per token: min-reduce, decision, table write (code/sum/count)
    mac_lanes: int = 16  # hd-wide dot-product lanes: (query, cluster) pairs per cycle
    score_latency: int = 16  # MAC tree + scale + exp2 ROM + normaliser pipeline fill
    wic_lanes: int = 16  # clusters per cycle in the bucket-histogram and mark passes
    layout_lanes: int = 16  # selection-bitmask bits scanned per cycle in arena order

    def seconds(self, cycles: int) -> float:
        return cycles / self.clock_hz


def _ceil(a, b):
    return -(-a // b)


# ---- Hash-bit Cluster Unit ------------------------------------------------------------------


def hash_unit(kq: np.ndarray, signs: np.ndarray) -> np.ndarray:
    """kq [..., m, hd] int16, signs [..., bits, hd] int8 -> codes [..., m, words] uint64."""
    hd = kq.shape[-1]
    dt = np.float32 if hd * (1 << 15) < (1 << 24) else np.float64  # exact-integer GEMM width
    proj = np.matmul(kq.astype(dt), np.swapaxes(signs, -1, -2).astype(dt))  # [..., m, bits] integers
    return pack_bits(proj > 0)


def assign_unit(
    codes: np.ndarray,
    cand_codes: np.ndarray,
    cand_counts: np.ndarray,
    *,
    threshold: int,
    max_size: int,
    horizon: int,
    lanes: int,
) -> tuple[np.ndarray, int]:
    """One KV head's tokens through the comparator array -> (assign [m] int64, compare cycles)."""
    m, c = codes.shape[0], cand_codes.shape[0]
    lo = max(0, c - horizon)
    if c:  # fast path: every token joins a given cluster and none fills up, so the list never changes
        dd = popcount(codes[:, None, :] ^ cand_codes[None, lo:, :]).sum(-1, dtype=np.int64)  # [m, window]
        dd += np.where(cand_counts[lo:] >= max_size, _FAR, 0)
        best = dd.shape[1] - 1 - np.argmin(dd[:, ::-1], axis=1)  # ties: the newest
        if (dd[np.arange(m), best] <= threshold).all() and (
            cand_counts[lo:] + np.bincount(best, minlength=dd.shape[1]) <= max_size
        ).all():
            return best + lo, m * _ceil(c - lo, lanes)
    d = popcount(codes[:, None, :] ^ np.concatenate([cand_codes, codes])[None, :, :]).sum(-1, dtype=np.int64)
    cnt = np.zeros(c + m, np.int64)  # [c+m] list entries: the given clusters, then new ones
    cnt[:c] = cand_counts
    col = np.empty(c + m, np.int64)  # list entry -> column of d
    col[:c] = np.arange(c)
    far = np.where(cnt >= max_size, _FAR, 0)
    total, out, cyc = c, np.empty(m, np.int64), 0
    for i in range(m):
        lo = max(0, total - horizon)
        cyc += _ceil(total - lo, lanes)
        dd = d[i, col[lo:total]] + far[lo:total]  # [window] the comparators' outputs
        j = total - 1 - int(np.argmin(dd[::-1])) if total > lo else -1  # ties: the newest
        if j < 0 or dd[j - lo] > threshold:
            j = total
            col[j] = c + i
            total += 1
        cnt[j] += 1
        if cnt[j] >= max_size:
            far[j] = _FAR
        out[i] = j
    return out, cyc


def table_unit(sums: np.ndarray, counts: np.ndarray, assign: np.ndarray, kq: np.ndarray) -> None:
    """In place: the fixed-point cluster-table update (sums [C, hd] int32, counts [C] uint16)."""
    np.add.at(sums, assign, kq.astype(np.int32))
    counts[:] = np.minimum(counts.astype(np.int64) + np.bincount(assign, minlength=counts.size), fx.COUNT_MAX)


# ---- WiCSum Threshold Unit ------------------------------------------------------------------


def exact_dot(qq: np.ndarray, rq: np.ndarray) -> np.ndarray:
    """qq [K, R, hd], rq [K, C, hd] int16 -> q.r [K, R, C], exact integers held in float64.

    Every product is < 2^30 and every partial sum < hd * 2^30 <= 2^53 for hd <= 2^23, so a float64
    GEMM rounds nothing, whatever its summation order."""
    return np.matmul(qq.astype(np.float64), np.swapaxes(rq, -1, -2).astype(np.float64))


_E_LIM = (fx.P_FRAC + 2) << fx.SCORE_FRAC  # exp2 of anything at or below -_E_LIM/256 shifts out to 0
_P_TABLE = fx.exp2(-np.arange(_E_LIM + 1, dtype=np.int64)).astype(np.float64)  # ROM + shifter, unrolled
assert _P_TABLE[-1] == 0


def mass_unit(qq: np.ndarray, rq: np.ndarray, counts: np.ndarray, shift: int = 0) -> np.ndarray:
    """qq [KVH, R, hd], rq [KVH, C, hd] Q7.8, counts [KVH, C] -> M [KVH, C] int64 (Q.24 sums over R).

    Integers carried in float64 stay below 2^53, so every product, shift (a power-of-two scale
    then floor) and sum below is exact."""
    valid = counts > 0  # [KVH, C]
    t = exact_dot(qq, rq)  # [KVH, R, C] Q.16, |.| < 2^36; then in place (no fresh 8-byte-per-element arrays)
    t *= fx.score_scale(qq.shape[-1]) * 2.0 ** -(fx.SCORE_SHIFT + shift)  # the block exponents fold in here
    np.floor(t, out=t)  # Q.8 log2 units, |.| < 2^26
    if not valid.all():
        t += np.where(valid, 0.0, -np.inf)[:, None, :]
    mx = t.max(-1, keepdims=True)  # [KVH, R, 1]
    mx[np.isinf(mx)] = 0  # a head without clusters
    np.subtract(mx, t, out=t)  # [KVH, R, C] >= 0: minus the exponent, Q.8
    np.minimum(t, _E_LIM, out=t)
    x = _P_TABLE.take(t.astype(np.int32))  # [KVH, R, C] Q0.20 (exp2 ROM value >> shift)
    x *= np.minimum(counts, fx.COUNT_MAX).astype(np.float64)[:, None, :]  # TC * P < 2^36
    z = x.sum(-1)  # [KVH, R] >= 2^20
    k = np.maximum(np.frexp(z)[1].astype(np.int64) - 1, 8)  # leading-one detector (z = 0: no clusters)
    g = (z.astype(np.int64) >> (k - 8)) & 255
    x *= np.ldexp(fx.RECIP_ROM[g].astype(np.float64), -(k + 16 - fx.W_FRAC))[..., None]
    np.floor(x, out=x)  # w = (x * RECIP) >> (k - 8), Q0.24
    m = x.sum(1)  # [KVH, C] < 2^53
    return np.where(valid, m, 0).astype(np.int64)


def wicsum_unit(m: np.ndarray, valid: np.ndarray, tq: int) -> tuple[np.ndarray, int, int, int]:
    """One head: M [C], valid [C], TAU_Q -> (keep [C] bool, buckets scanned, crossing-bucket size, clusters
    in the occupied buckets below the crossing one, which the early exit never touches).

    Histogram by exponent (bit length), scan from the top bucket, stop at the first bucket whose
    running sum reaches the goal, sort only that bucket (by -M, then id)."""
    keep = np.zeros(m.shape[0], bool)
    idx = np.flatnonzero(valid)
    if idx.size == 0:
        return keep, 0, 0, 0
    if tq >= 1 << fx.TAU_FRAC:
        keep[idx] = True
        return keep, 0, 0, 0
    mv = m[idx]
    b = np.frexp(mv.astype(np.float64))[1]  # [V] bit length, 0 for M = 0
    hist = np.bincount(b, weights=mv, minlength=BUCKETS).astype(np.int64)  # exact: sums < 2^53
    goal = (int(hist.sum()) * tq) >> fx.TAU_FRAC
    top = int(b.max())  # the histogram pass tracks the highest occupied bucket; the scan starts there
    cum = np.cumsum(hist[top::-1])  # running sums, bucket top first
    i = 0 if goal == 0 else int(np.searchsorted(cum, goal))  # early exit: the first bucket that crosses
    cross, scanned, run = top - i, i + 1, int(cum[i - 1]) if i else 0
    keep[idx[b > cross]] = True
    inb = idx[b == cross]
    inb = inb[np.lexsort((inb, -m[inb]))]  # sort the crossing bucket only
    before = run + np.cumsum(m[inb]) - m[inb]
    take = max(1, int((before < goal).sum()))
    keep[inb[:take]] = True
    return keep, scanned, int(inb.size), int((b < cross).sum())


# ---- KV management unit ---------------------------------------------------------------------


def layout_unit(selected: np.ndarray, start: np.ndarray, length: np.ndarray) -> np.ndarray:
    """Scan the selection bitmask in arena order, merging touching ranges -> runs [r, 2] int64."""
    if selected.size == 0:
        return np.zeros((0, 2), np.int64)
    o = selected[np.lexsort((selected, start[selected]))]
    s, e = start[o], start[o] + length[o]  # [k]
    brk = np.flatnonzero(s[1:] != e[:-1]) + 1  # a run ends where the next range does not touch
    first, last = np.concatenate([[0], brk]), np.concatenate([brk - 1, [s.size - 1]])
    return np.stack([s[first], e[last]], axis=1).astype(np.int64)


class DreEmuBackend:
    """The DRE emulator behind the RetrievalBackend Protocol; `stats()` reads its cycle counters."""

    name = "dre-emu"

    def __init__(self, model: CycleModel | None = None):
        self.model = model or CycleModel()
        self.reset_stats()

    def reset_stats(self) -> None:
        self._cyc = dict(hash=0, assign=0, score=0, wicsum=0, layout=0)
        self._calls = dict(self._cyc)
        self._ev = dict(saturated=0, buckets_scanned=0, early_exits=0, sorted=0)

    def stats(self) -> dict:
        """Cycle and call counters per unit since the last reset, the total, and its time at the clock."""
        total = sum(self._cyc.values())
        return dict(
            cycles=dict(self._cyc),
            calls=dict(self._calls),
            events=dict(self._ev),
            total_cycles=total,
            seconds=self.model.seconds(total),
            model=asdict(self.model),
        )

    def _count(self, unit: str, cycles: int) -> None:
        self._cyc[unit] += int(cycles)
        self._calls[unit] += 1

    def _q(self, x: np.ndarray) -> tuple[np.ndarray, int]:
        q, s = fx.quantize_block(x)
        self._ev["saturated"] += int(np.count_nonzero((q == fx.KEY_MAX) | (q == fx.KEY_MIN)))
        return q, s

    def hash_q(self, kq: np.ndarray, signs: np.ndarray) -> np.ndarray:
        """The unit on its own formats: kq [..., m, hd] int16, signs [..., bits, hd] int8 -> codes."""
        bits, keys_n = signs.shape[-2], int(np.prod(kq.shape[:-1]))
        self._count("hash", keys_n * _ceil(bits, self.model.hash_lanes) + self.model.hash_latency)
        return hash_unit(kq, signs)

    def hash_codes(self, keys: np.ndarray, planes: np.ndarray) -> np.ndarray:
        return self.hash_q(self._q(keys)[0], fx.plane_signs(planes))

    def cluster_assign(
        self,
        codes: np.ndarray,
        cand_codes: np.ndarray,
        cand_counts: np.ndarray,
        *,
        threshold: int,
        max_size: int,
        horizon: int,
    ) -> np.ndarray:
        out, cyc = assign_unit(
            codes,
            cand_codes,
            cand_counts,
            threshold=threshold,
            max_size=max_size,
            horizon=horizon,
            lanes=self.model.cmp_lanes,
        )
        self._count("assign", cyc + codes.shape[0] * self.model.assign_cycles)
        return out

    def score_q(
        self, qq: np.ndarray, rq: np.ndarray, counts: np.ndarray, tq: int, shift: int = 0
    ) -> tuple[np.ndarray, np.ndarray]:
        """qq [KVH, R, hd], rq [KVH, C, hd] Q7.8, counts [KVH, C], TAU_Q, the two block exponents' sum
        -> keep [KVH, C], M [KVH, C] int64."""
        kvh, c = counts.shape
        mm = mass_unit(qq, rq, counts, shift)  # [KVH, C]
        valid = counts > 0
        r, ml = qq.shape[1], self.model
        keep = np.zeros((kvh, c), bool)
        wcyc = 0
        for h in range(kvh):
            keep[h], scanned, nb, below = wicsum_unit(mm[h], valid[h], tq)
            nv = int(valid[h].sum())
            wcyc += 2 * _ceil(nv, ml.wic_lanes) + scanned + nb * max(1, int(np.ceil(np.log2(max(nb, 1)))))
            self._ev["buckets_scanned"] += scanned
            self._ev["sorted"] += nb
            self._ev["early_exits"] += int(below > 0)
        self._count("score", 2 * _ceil(r * int(valid.sum()), ml.mac_lanes) + kvh * (ml.score_latency + r))
        self._count("wicsum", wcyc)
        return keep, mm

    def score_select(
        self,
        q: np.ndarray,
        reps: np.ndarray,
        counts: np.ndarray,
        *,
        tau: float,
    ) -> tuple[np.ndarray, np.ndarray]:
        kvh, c = counts.shape
        if c == 0:
            return np.zeros((kvh, 0), bool), np.zeros((kvh, 0), np.float32)
        (qq, a), (rq, b) = self._q(q), self._q(reps)
        keep, mm = self.score_q(qq, rq, counts, fx.tau_q(tau), a + b)
        return keep, fx.mass_float(mm, q.shape[1])

    def layout(self, selected: np.ndarray, start: np.ndarray, length: np.ndarray) -> np.ndarray:
        runs = layout_unit(selected, start, length)
        self._count("layout", _ceil(start.shape[0], self.model.layout_lanes) + runs.shape[0])
        return runs
