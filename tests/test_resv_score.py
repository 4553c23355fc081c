"""ReSV's scoring modes (ReSVOptions.score): the cheap ones against the exact reference."""

from __future__ import annotations

import numpy as np
import pytest

from tests.test_retrieval import CHUNKINGS, build, make_text, run, stream
from vrex_edge.accel.host import hamming
from vrex_edge.errors import ConfigError
from vrex_edge.runtime.retrieval import FullKV, make_policy
from vrex_edge.runtime.rope import Rope


def fill(cache, text, chunks, seed=0):
    """Attend `chunks` through `cache`; returns the last chunk's (q, positions) for scoring."""
    rng = np.random.default_rng(seed)
    pos, last = 0, None
    for q, k, v, phase in stream(rng, text, chunks):
        p = np.arange(pos, pos + q.shape[1])
        cache.attend(q, k, v, p, phase=phase)
        pos, last = pos + q.shape[1], (q, p)
    return last


def scoring_queries(cache, q, p):
    """The [KVH, G*n, hd] queries ReSVCache._retrieve scores with (post-RoPE keys)."""
    q_abs = cache.rope.apply(q, p)
    return q_abs.reshape(cache.kvh, cache.g * q.shape[1], cache.hd)


@pytest.mark.parametrize("chunks", CHUNKINGS)
@pytest.mark.parametrize("mode", ["subset", "mean", "prefilter"])
def test_tau1_equals_full_in_every_mode(chunks, mode):
    text = make_text()
    ref = run(FullKV(text, Rope(text.rope)), text, chunks)
    got = run(build("resv", text, tau=1.0, score=mode, hamming=6, sink=4, recent=16, dense_below=0), text, chunks)
    for a, b in zip(ref, got, strict=True):
        np.testing.assert_allclose(b, a, rtol=2e-5, atol=2e-5)


def test_subset_of_all_queries_and_full_prefilter_equal_exact():
    text = make_text()
    exact = build("resv", text, tau=0.8, hamming=6, sink=4, recent=10, dense_below=0, reps="f32")  # as prefilter
    q, p = fill(exact, text, [10] * 30)
    qs = scoring_queries(exact, q, p)
    k0, m0 = exact.store.score(qs, tau=0.8)
    st = exact.store
    st.score_mode, st.score_queries = "subset", 10  # every token of the 10-token chunk
    k1, m1 = st.score(qs, tau=0.8)
    np.testing.assert_array_equal(k1, k0)
    np.testing.assert_array_equal(m1, m0)
    st.score_mode, st.prefilter = "prefilter", 1.0  # every cluster is a candidate
    k2, m2 = st.score(qs, tau=0.8)
    np.testing.assert_allclose(m2, m0, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(k2, k0)


def test_subset_scores_evenly_spaced_tokens_and_mean_the_chunk_mean():
    text = make_text()
    cache = build("resv", text, score="subset", score_queries=3, hamming=6, sink=4, recent=10, dense_below=0)
    st = cache.store
    q = np.random.default_rng(2).standard_normal((cache.kvh, cache.g * 10, cache.hd)).astype(np.float32)
    sub = st._queries(q)
    want = q.reshape(cache.kvh, cache.g, 10, cache.hd)[:, :, [0, 4, 9]]  # linspace(9, 0, 3) rounded
    np.testing.assert_array_equal(sub, want.reshape(cache.kvh, -1, cache.hd))
    assert st._queries(q[:, ::10]).shape == q[:, ::10].shape  # a decode token is scored as it is
    st.score_mode = "mean"
    np.testing.assert_allclose(st._queries(q), q.reshape(cache.kvh, cache.g, 10, cache.hd).mean(2), rtol=1e-6)


@pytest.mark.parametrize("frac", [0.2, 0.5])
def test_prefilter_scores_the_nearest_codes_and_keeps_only_candidates(frac):
    text = make_text()
    cache = build("resv", text, tau=0.9, score="prefilter", prefilter=frac, hamming=6, sink=4, recent=10, dense_below=0)
    q, p = fill(cache, text, [10] * 40)
    st = cache.store
    qs = scoring_queries(cache, q, p)
    keep, mass = st.score(qs, tau=0.9)
    c = int(st.nclu.max())
    for h in range(cache.kvh):
        valid = st.counts[h, :c] > 0
        d = hamming(st.backend.hash_codes(qs[h], st.planes[h]), st.codes[h, :c]).min(0)  # [C]
        cand = mass[h] > 0
        assert not (keep[h] & ~cand).any()
        assert cand.sum() >= np.ceil(frac * valid.sum())
        assert d[cand].max() <= d[valid & ~cand].min(initial=10**6)  # the nearest codes were scored
        np.testing.assert_allclose(mass[h].sum(dtype=np.float64), 1.0, rtol=1e-5)


def test_score_options_are_checked():
    with pytest.raises(ConfigError, match="score"):
        make_policy("resv", score="fast")
    with pytest.raises(ConfigError, match="score_keys"):
        make_policy("resv", score="prefilter", keys="pre", score_keys="post")
    with pytest.raises(ConfigError, match="prefilter"):
        make_policy("resv", score="prefilter", prefilter=0)
