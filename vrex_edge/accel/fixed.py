"""The fixed-point host reference: the DRE's quantisation, written plainly (the emulator's oracle).

Formats (docs/dre.md has the table and the reasons):
  keys, queries, representatives  Q7.8 in int16 (8 fraction bits) after a per-call power-of-two block
                                  prescale 2^s (s in 0..16), round half to even, saturating
  hyperplanes                     +-1 (a sign bit); projection = adds/subtracts of Q7.8 -> int32
  code bit b                      1 when the projection onto plane b is > 0; packed 64 per uint64 word
  cluster table                   code (the founder's), key sum int32 (Q.8), count uint16
  representative                  (sum * RECIP_COUNT[count] + 2^15) >> 16 -> Q7.8 int16
  score (log2 units)              floor(q.rep * SCORE_SCALE / 2^(23 + s_q + s_rep)): Q.8 of log2(e) q.rep/sqrt(hd)
  exp2                            2^(e/256), e <= 0: EXP2_ROM[e & 255] (Q1.15) shifted by e >> 8 -> Q0.20
  per-query mass                  x = TC * P (uint64); Z = sum_j x; w = (x * RECIP_ROM[g]) >> k,
                                  Z = 2^k (1 + g/256 + ...): w ~ x/Z in Q0.24
  cluster mass                    M_j = sum over queries of w (uint64); the float mass is M / (R * 2^24)
  WiCSum                          goal = (total * TAU_Q) >> 16, TAU_Q = round(tau * 2^16); order by
                                  (-M, id); keep the shortest prefix whose sum reaches goal (>= 1 cluster)
Everything here is plain integer numpy (int64 matmuls, a full sort): slow, obviously right.
"""

from __future__ import annotations

import numpy as np

from vrex_edge.accel.host import pack_bits, popcount

KEY_FRAC = 8  # fraction bits of keys, queries and representatives (Q7.8)
KEY_MIN, KEY_MAX = -(1 << 15), (1 << 15) - 1
SCORE_FRAC = 8  # fraction bits of scores in log2 units
SCORE_SHIFT = 23  # (2 * KEY_FRAC) product fraction + 15 scale fraction - SCORE_FRAC
P_FRAC = 20  # fraction bits of the exp2 output
W_FRAC = 24  # fraction bits of a per-query normalised mass
TAU_FRAC = 16
COUNT_MAX = (1 << 16) - 1  # count register width (uint16)
EXP2_ROM = np.round(2.0 ** (np.arange(256) / 256.0) * (1 << 15)).astype(np.int64)  # [256] Q1.15
RECIP_ROM = np.round((1 << 24) / (256.5 + np.arange(256))).astype(np.int64)  # [256] 1/(1+(g+.5)/256), Q0.16
RECIP_COUNT = np.concatenate([[0], np.round((1 << 16) / np.arange(1, 1025))]).astype(np.int64)  # [1025] Q0.16


def score_scale(hd: int) -> int:
    """log2(e) / sqrt(hd) in Q0.15 (the one constant multiplier of the score path)."""
    return int(round(np.log2(np.e) / np.sqrt(hd) * (1 << 15)))


def tau_q(tau: float) -> int:
    return int(round(min(max(tau, 0.0), 1.0) * (1 << TAU_FRAC)))


MAX_SHIFT = 16  # block exponent range of the input converter


def block_shift(x: np.ndarray) -> int:
    """The input converter's block exponent: the power-of-two prescale s in [0, MAX_SHIFT] that puts the
    largest |x| of the call in [32, 64) (small-magnitude keys keep their bits); 0 for large or empty input."""
    m = float(np.max(np.abs(x))) if x.size else 0.0
    if not 0.0 < m < 32.0:
        return 0
    return min(int(np.floor(np.log2(64.0 / m))), MAX_SHIFT)


def quantize(x: np.ndarray, shift: int = 0) -> np.ndarray:
    """float * 2^shift -> Q7.8 int16: round half to even (convergent), saturate."""
    y = np.rint(np.asarray(x, np.float32) * np.float32(1 << (KEY_FRAC + shift)))  # exact: a power-of-two scale
    return np.clip(y, KEY_MIN, KEY_MAX, out=y).astype(np.int16)


def quantize_block(x: np.ndarray) -> tuple[np.ndarray, int]:
    s = block_shift(x)
    return quantize(x, s), s


def plane_signs(planes: np.ndarray) -> np.ndarray:
    """+-1 float planes [..., bits, hd] -> int8 (+1 / -1); anything >= 0 counts as +1."""
    return np.where(np.asarray(planes) >= 0, 1, -1).astype(np.int8)


# ---- Hash-bit Cluster Unit ------------------------------------------------------------------


def project(kq: np.ndarray, signs: np.ndarray) -> np.ndarray:
    """kq [..., m, hd] int16, signs [..., bits, hd] int8 -> [..., m, bits] int32 (adds/subtracts)."""
    return np.matmul(kq.astype(np.int64), np.swapaxes(signs, -1, -2).astype(np.int64)).astype(np.int32)


def hash_codes(kq: np.ndarray, signs: np.ndarray) -> np.ndarray:
    """-> codes [..., m, words] uint64: bit b set when the projection onto plane b is > 0."""
    return pack_bits(project(kq, signs) > 0)


def cluster_assign(
    codes: np.ndarray, cand_codes: np.ndarray, cand_counts: np.ndarray, *, threshold: int, max_size: int, horizon: int
) -> np.ndarray:
    """The sequential definition (RetrievalBackend.cluster_assign), one token at a time."""
    lst = [c for c in cand_codes]
    cnt = [int(c) for c in cand_counts]
    out = np.empty(codes.shape[0], np.int64)
    for i, code in enumerate(codes):
        lo = max(0, len(lst) - horizon)
        best, bd = -1, None
        for j in range(lo, len(lst)):
            d = int(popcount(code ^ lst[j]).sum())
            if cnt[j] < max_size and d <= threshold and (bd is None or d <= bd):
                best, bd = j, d
        if best < 0:
            lst.append(code)
            cnt.append(0)
            best = len(lst) - 1
        cnt[best] += 1
        out[i] = best
    return out


def table_update(sums: np.ndarray, counts: np.ndarray, assign: np.ndarray, kq: np.ndarray) -> None:
    """In place: sums [C, hd] int32 += member keys, counts [C] uint16 += 1, per token in order."""
    for i, j in enumerate(assign):
        sums[j] = (sums[j].astype(np.int64) + kq[i]).astype(np.int32)
        counts[j] = min(int(counts[j]) + 1, COUNT_MAX)


def representatives(sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """sums [..., C, hd] int32, counts [..., C] -> mean keys [..., C, hd] Q7.8 (reciprocal ROM, round)."""
    r = RECIP_COUNT[np.minimum(counts, RECIP_COUNT.size - 1).astype(np.int64)][..., None]
    rep = (sums.astype(np.int64) * r + (1 << 15)) >> 16
    return np.clip(rep, KEY_MIN, KEY_MAX).astype(np.int16)


# ---- WiCSum Threshold Unit ------------------------------------------------------------------


def scores(qq: np.ndarray, rq: np.ndarray, shift: int = 0) -> np.ndarray:
    """qq [R, hd], rq [C, hd] Q7.8 (prescaled by 2^shift together) -> t [R, C] int64:
    q.rep/sqrt(hd)*log2(e) in Q.8, floored."""
    dot = qq.astype(np.int64) @ rq.astype(np.int64).T  # Q.16, |dot| < 2^36
    return (dot * score_scale(qq.shape[-1])) >> (SCORE_SHIFT + shift)


def exp2(e: np.ndarray) -> np.ndarray:
    """e <= 0 in Q.8 -> 2^(e/256) in Q0.20 (uint), 0 once the shift passes the width."""
    n, f = e >> SCORE_FRAC, e & ((1 << SCORE_FRAC) - 1)
    sh = np.minimum(-n, 63)
    return (EXP2_ROM[f] << (P_FRAC - 15)) >> sh


def recip_normalise(x: np.ndarray, z: np.ndarray) -> np.ndarray:
    """x [R, C] uint, z [R] = sum of x >= 2^20 -> w ~ x / z in Q0.24.

    z = 2^k (1 + g/256 + ...): a leading-one detector gives k, the next 8 bits g index RECIP_ROM."""
    k = np.array([int(v).bit_length() - 1 for v in z], np.int64)  # [R]
    assert (k >= 8).all()
    g = (z >> (k - 8)) & 255  # [R]
    return (x * RECIP_ROM[g][:, None]) >> (k[:, None] + 16 - W_FRAC)


def masses(qq: np.ndarray, rq: np.ndarray, counts: np.ndarray, shift: int = 0) -> np.ndarray:
    """One KV head: qq [R, hd], rq [C, hd], counts [C] -> M [C] int64 (sum over queries of w, Q.24)."""
    valid = counts > 0
    m = np.zeros(counts.shape[0], np.int64)
    if not valid.any():
        return m
    t = scores(qq, rq[valid], shift)  # [R, V]
    e = t - t.max(axis=1, keepdims=True)  # [R, V] <= 0
    x = np.minimum(counts[valid], COUNT_MAX).astype(np.int64)[None, :] * exp2(e)  # [R, V] < 2^36
    z = x.sum(axis=1)  # [R] > 0: the max cluster contributes >= 2^20
    m[valid] = recip_normalise(x, z).sum(axis=0)
    return m


def wicsum(m: np.ndarray, valid: np.ndarray, tq: int) -> np.ndarray:
    """M [C] int, valid [C] bool, TAU_Q -> keep [C] bool by a full sort on (-M, id)."""
    keep = np.zeros(m.shape[0], bool)
    idx = np.flatnonzero(valid)
    if idx.size == 0:
        return keep
    if tq >= 1 << TAU_FRAC:
        keep[idx] = True
        return keep
    goal = (int(m[idx].sum()) * tq) >> TAU_FRAC
    order = idx[np.lexsort((idx, -m[idx]))]
    before = np.cumsum(m[order]) - m[order]  # exclusive running sums
    take = max(1, int((before < goal).sum()))
    keep[order[:take]] = True
    return keep


def score_select(
    qq: np.ndarray, rq: np.ndarray, counts: np.ndarray, tq: int, shift: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """qq [KVH, R, hd], rq [KVH, C, hd] Q7.8, counts [KVH, C] -> keep [KVH, C] bool, M [KVH, C] int64."""
    mm = (
        np.stack([masses(qq[h], rq[h], counts[h], shift) for h in range(counts.shape[0])])
        if counts.size
        else np.zeros(counts.shape, np.int64)
    )
    keep = (
        np.stack([wicsum(mm[h], counts[h] > 0, tq) for h in range(counts.shape[0])])
        if counts.size
        else np.zeros(counts.shape, bool)
    )
    return keep, mm


def mass_float(m: np.ndarray, r: int) -> np.ndarray:
    """M (Q.24 sums over r queries) -> the mean normalised mass as float32."""
    return (m / float(r << W_FRAC)).astype(np.float32)


# ---- KV management unit ---------------------------------------------------------------------


def layout(selected: np.ndarray, start: np.ndarray, length: np.ndarray) -> np.ndarray:
    """Selected clusters in arena order, touching ranges merged -> runs [r, 2] int64 (one at a time)."""
    runs: list[list[int]] = []
    for j in sorted(selected.tolist(), key=lambda j: (int(start[j]), j)):
        a, b = int(start[j]), int(start[j]) + int(length[j])
        if runs and runs[-1][1] == a:
            runs[-1][1] = b
        else:
            runs.append([a, b])
    return np.array(runs, np.int64).reshape(-1, 2)


class FixedBackend:
    """The fixed-point reference behind the RetrievalBackend Protocol (tests run the resv policy on it)."""

    name = "fixed"

    def hash_codes(self, keys: np.ndarray, planes: np.ndarray) -> np.ndarray:
        return hash_codes(quantize_block(keys)[0], plane_signs(planes))

    def cluster_assign(self, codes, cand_codes, cand_counts, *, threshold: int, max_size: int, horizon: int):
        return cluster_assign(codes, cand_codes, cand_counts, threshold=threshold, max_size=max_size, horizon=horizon)

    def score_select(self, q: np.ndarray, reps: np.ndarray, counts: np.ndarray, *, tau: float):
        (qq, a), (rq, b) = quantize_block(q), quantize_block(reps)
        keep, mm = score_select(qq, rq, counts, tau_q(tau), a + b)
        return keep, mass_float(mm, q.shape[1])

    def layout(self, selected: np.ndarray, start: np.ndarray, length: np.ndarray) -> np.ndarray:
        return layout(selected, start, length)
