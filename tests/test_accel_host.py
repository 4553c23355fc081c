"""The NumPy host retrieval backend against straightforward Python references, and the registry."""

from __future__ import annotations

import numpy as np
import pytest

from vrex_edge.accel import HostBackend, backend, backend_names, get_backend, hyperplanes, register_backend
from vrex_edge.accel.host import assign_batch, cluster_assign_loop, hamming, pack_bits, wicsum
from vrex_edge.errors import AccelError


def ref_assign(codes, cand, counts, threshold, max_size, horizon):
    """The sequential definition, on Python ints."""
    as_int = [sum(int(w) << (64 * i) for i, w in enumerate(row)) for row in codes]
    lst = [(sum(int(w) << (64 * i) for i, w in enumerate(row)), int(c)) for row, c in zip(cand, counts, strict=True)]
    out = []
    for x in as_int:
        lo = max(0, len(lst) - horizon)
        best, bd = None, None
        for j in range(lo, len(lst)):
            code, cnt = lst[j]
            d = bin(x ^ code).count("1")
            if cnt < max_size and d <= threshold and (bd is None or d <= bd):
                best, bd = j, d
        if best is None:
            lst.append((x, 1))
            out.append(len(lst) - 1)
        else:
            lst[best] = (lst[best][0], lst[best][1] + 1)
            out.append(best)
    return np.array(out)


def test_hash_codes_pack_sign_bits():
    rng = np.random.default_rng(0)
    planes = hyperplanes(3, 2, 70, 16)  # [KVH, bits, hd], +-1
    assert set(np.unique(planes)) == {-1.0, 1.0}
    assert np.array_equal(planes, hyperplanes(3, 2, 70, 16)) and not np.array_equal(planes, hyperplanes(4, 2, 70, 16))
    keys = rng.standard_normal((2, 5, 16)).astype(np.float32)
    codes = HostBackend().hash_codes(keys, planes)  # [2, 5, 2]
    assert codes.shape == (2, 5, 2) and codes.dtype == np.uint64
    bits = np.einsum("hmd,hbd->hmb", keys, planes) > 0
    for b in (0, 5, 63, 64, 69):
        assert np.array_equal((codes[..., b // 64] >> np.uint64(b % 64)) & np.uint64(1), bits[..., b].astype(np.uint64))
    assert (codes[..., 1] >> np.uint64(6) == 0).all()  # padding bits stay 0


@pytest.mark.parametrize("seed", range(6))
def test_cluster_assign_matches_sequential_definition(seed):
    rng = np.random.default_rng(seed)
    bits = pack_bits(rng.random((40, 8)) < 0.5)  # 8-bit codes: near matches are common
    cand = pack_bits(rng.random((int(rng.integers(0, 6)), 8)) < 0.5)
    counts = rng.integers(1, 4, size=cand.shape[0])
    for threshold, max_size, horizon in [(1, 3, 4), (2, 100, 100), (3, 2, 1), (0, 5, 8)]:
        got = HostBackend().cluster_assign(bits, cand, counts, threshold=threshold, max_size=max_size, horizon=horizon)
        assert np.array_equal(got, ref_assign(bits, cand, counts, threshold, max_size, horizon))
    # the vectorised fast path: every token fits an old cluster
    got = (
        HostBackend().cluster_assign(cand[:1].repeat(3, 0), cand[:1], np.array([1]), threshold=0, max_size=8, horizon=4)
        if cand.size
        else np.zeros(3, np.int64)
    )
    assert (got == 0).all()


@pytest.mark.parametrize("seed", range(4))
def test_batched_assign_matches_the_per_token_reference(seed):
    """assign_batch (heads at once, no loop over tokens) == cluster_assign_loop head by head, with padded
    candidate lists, clusters filling up inside the batch, horizons shorter than the list, repeated codes."""
    rng = np.random.default_rng(seed)
    for _ in range(150):
        nb, m, c = int(rng.integers(1, 4)), int(rng.integers(0, 30)), int(rng.integers(0, 9))
        nbits = int(rng.choice([4, 8, 70]))
        codes = pack_bits(rng.random((nb, m, nbits)) < 0.5)
        if m and rng.random() < 0.3:
            codes[:, m // 2 :] = codes[:, :1]  # a run of identical keys: long chains of dependent choices
        cand = pack_bits(rng.random((nb, c, nbits)) < 0.5)
        kw = {
            "threshold": int(rng.integers(0, 4)),
            "max_size": int(rng.integers(1, 6)),
            "horizon": int(rng.integers(1, 12)),
        }
        counts = rng.integers(1, kw["max_size"] + 2, size=(nb, c))
        ncand = rng.integers(0, c + 1, size=nb)
        got = assign_batch(codes, cand, counts, ncand, **kw)
        for b in range(nb):
            p = c - ncand[b]
            assert np.array_equal(got[b], cluster_assign_loop(codes[b], cand[b, p:], counts[b, p:], **kw))
            assert np.array_equal(
                got[b], ref_assign(codes[b], cand[b, p:], counts[b, p:], kw["threshold"], kw["max_size"], kw["horizon"])
            )


def test_masses_are_softmax_consistent():
    rng = np.random.default_rng(1)
    q = rng.standard_normal((2, 6, 8)).astype(np.float32)
    reps = rng.standard_normal((2, 5, 8)).astype(np.float32)
    counts = np.array([[3, 1, 0, 2, 5], [1, 1, 1, 1, 0]])
    mass = HostBackend().masses(q, reps, counts)
    s = np.einsum("hrd,hcd->hrc", q.astype(np.float64), reps) / np.sqrt(8)
    w = counts[:, None, :] * np.exp(s)  # the exact attention mass if every member equalled its representative
    ref = (w / w.sum(-1, keepdims=True)).mean(1)
    np.testing.assert_allclose(mass, ref, rtol=1e-5, atol=1e-7)
    assert mass[0, 2] == 0 and mass[1, 4] == 0


@pytest.mark.parametrize("tau", [0.3, 0.9, 0.99, 1.0])
def test_wicsum_shortest_prefix(tau):
    rng = np.random.default_rng(2)
    q = rng.standard_normal((3, 4, 8)).astype(np.float32) * 3
    reps = rng.standard_normal((3, 50, 8)).astype(np.float32)
    counts = rng.integers(1, 10, size=(3, 50))
    counts[2, 40:] = 0  # a head with fewer clusters (padding)
    keep, mass = HostBackend().score_select(q, reps, counts, tau=tau)
    for h in range(3):
        kept = np.flatnonzero(keep[h])
        assert (counts[h, kept] > 0).all()
        total = mass[h].sum(dtype=np.float64)
        if tau >= 1:
            assert set(kept) == set(np.flatnonzero(counts[h]))
            continue
        by_mass = kept[np.argsort(-mass[h, kept])]
        assert mass[h, kept].sum(dtype=np.float64) >= tau * total * (1 - 1e-6)
        assert mass[h, by_mass[:-1]].sum(dtype=np.float64) < tau * total  # dropping the lightest falls short
        assert mass[h, kept].min() >= np.delete(mass[h], kept).max()  # the heaviest clusters
    if tau < 1:
        assert len(set(keep.sum(1).tolist())) > 1  # heads differ


def test_wicsum_buckets_equal_full_sort():
    rng = np.random.default_rng(3)
    for _ in range(20):
        mass = rng.lognormal(0, 3, size=(3, int(rng.integers(1, 300)))).astype(np.float32)
        mass /= mass.sum(1, keepdims=True)
        tau = float(rng.uniform(0.3, 0.999))
        keep = wicsum(mass, tau)
        for h in range(3):
            o = np.argsort(-mass[h])
            k = int((np.cumsum(mass[h, o], dtype=np.float64) < tau * mass[h].sum(dtype=np.float64)).sum()) + 1
            assert set(np.flatnonzero(keep[h])) == set(o[:k].tolist())


def test_layout_merges_adjacent_ranges():
    start = np.array([0, 4, 9, 12, 20])
    length = np.array([4, 5, 3, 2, 1])
    runs = HostBackend().layout(np.array([3, 0, 1]), start, length)
    assert runs.tolist() == [[0, 9], [12, 14]]
    assert HostBackend().layout(np.array([], np.int64), start, length).shape == (0, 2)


def test_hamming():
    a = pack_bits(np.array([[1, 0, 1, 1]], bool))
    b = pack_bits(np.array([[0, 0, 1, 0], [1, 0, 1, 1]], bool))
    assert hamming(a, b).tolist() == [[2, 0]]


def test_registry(monkeypatch):
    assert "host" in backend_names()
    assert get_backend("host").name == "host"
    assert isinstance(get_backend("host"), backend.RetrievalBackend)
    with pytest.raises(AccelError, match="unknown retrieval backend 'dre-x'.*host"):
        get_backend("dre-x")

    def broken():
        raise OSError("no /dev/xdma0_user")

    monkeypatch.setattr(backend, "_BACKENDS", dict(backend._BACKENDS))
    register_backend("test-broken", broken)
    with pytest.raises(AccelError, match="unavailable: no /dev/xdma0_user"):
        get_backend("test-broken")
