"""int8 representatives (ReSVOptions.reps = "int8"): the kernel against its NumPy oracle and the float32
masses, the lazily refreshed table through a stream, and ReSV's invariants with it."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from tests.test_resv_score import fill, scoring_queries
from tests.test_retrieval import CHUNKINGS, build, make_text, run
from vrex_edge.accel.host import HostBackend
from vrex_edge.accel.q8 import (
    QUERY_ZERO,
    Int8Masses,
    log_counts,
    masses_reference,
    quantize_columns,
    quantize_queries,
)
from vrex_edge.errors import ConfigError, KVStoreError
from vrex_edge.runtime.kvstore.resume import _check_meta
from vrex_edge.runtime.retrieval import FullKV
from vrex_edge.runtime.retrieval.reps import Int8Reps
from vrex_edge.runtime.retrieval.resv import ReSVOptions
from vrex_edge.runtime.rope import Rope


def random_table(rng, kvh=3, hd=64, c=700, r=30):
    q = (3 * rng.standard_normal((kvh, r, hd))).astype(np.float32)  # [KVH, R, hd]
    reps = rng.standard_normal((kvh, hd, c)).astype(np.float32)  # [KVH, hd, C] (means_t's layout)
    counts = rng.integers(0, 4, (kvh, c))
    counts[:, 0] = 1  # every head has a cluster
    return q, reps, counts


def test_kernel_equals_its_integer_oracle():
    q, reps, counts = random_table(np.random.default_rng(0))
    vals, scale = Int8Reps(*reps.shape[:2]).current(reps, reps.shape[2])
    got = Int8Masses()(q, vals, scale, log_counts(counts))
    ref = masses_reference(q, vals, scale, counts)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(got.sum(1), 1.0, rtol=1e-5)
    assert (got[counts == 0] == 0).all()


def test_int8_masses_track_the_float32_masses():
    rng = np.random.default_rng(1)
    q, reps, counts = random_table(rng)
    vals, scale = Int8Reps(*reps.shape[:2]).current(reps, reps.shape[2])
    got = Int8Masses()(q, vals, scale, log_counts(counts))
    ref = HostBackend().masses(q, reps.swapaxes(1, 2), counts)
    assert np.abs(got - ref).max() < 0.05 * ref.max()
    # the heaviest clusters are the same ones
    for h in range(q.shape[0]):
        top = set(np.argsort(-ref[h])[:20].tolist())
        assert len(top & set(np.argsort(-got[h])[:30].tolist())) >= 19


def test_quantizers_stay_in_their_ranges():
    rng = np.random.default_rng(2)
    x = (10 * rng.standard_normal((16, 50))).astype(np.float32)
    x[:, 3] = 0  # an all-zero column
    vals, scale = np.empty(x.shape, np.int8), np.empty(50, np.float32)
    quantize_columns(x, vals, scale)
    assert np.abs(vals).max() == 127 and (vals[:, 3] == 0).all()
    assert np.abs(vals * scale - x).max() <= 0.5 * scale.max() + 1e-6
    a, qs = quantize_queries(x[None])
    assert a.min() >= QUERY_ZERO - 63 and a.max() <= QUERY_ZERO + 63  # 7 bits: no 16-bit pair overflow
    assert np.abs((a[0].astype(np.float32) - QUERY_ZERO) * qs[0] - x).max() <= 0.5 * qs.max() + 1e-6


@pytest.mark.parametrize(
    "opts",
    [
        dict(hamming=6, sink=4, recent=16, dense_below=0),
        dict(hamming=6, sink=4, recent=16, dense_below=0, cluster_batch=7, horizon=4, max_cluster=4),
    ],
)
def test_the_table_follows_every_change_of_the_representatives(opts):
    """After a stream (clusters growing, opening, sealing, retiring), the lazily refreshed int8 table
    equals the int8 form of the float32 representatives computed afresh."""
    text = make_text()
    cache = build("resv", text, tau=0.8, reps="int8", **opts)
    rng = np.random.default_rng(3)
    for i, chunks in enumerate([[10] * 10, [1] * 7, [10] * 20]):
        fill(cache, text, chunks, seed=i + int(rng.integers(100)))
        st = cache.store
        c = int((st.nclu - st.lo).max())
        vals, scale = st.q8.current(st.means_t, c)
        ref_vals, ref_scale = Int8Reps(cache.kvh, cache.hd).current(st.means_t, c)
        assert np.array_equal(vals, ref_vals) and np.array_equal(scale, ref_scale)
    twin = copy.deepcopy(cache)  # benchmarks copy filled caches
    assert twin.store.q8 is not st.q8 and np.array_equal(twin.store.q8.vals_t, st.q8.vals_t)


@pytest.mark.parametrize("chunks", CHUNKINGS)
def test_tau1_equals_full_with_int8_reps(chunks):
    text = make_text()
    ref = run(FullKV(text, Rope(text.rope)), text, chunks)
    got = run(build("resv", text, tau=1.0, reps="int8", hamming=6, sink=4, recent=16, dense_below=0), text, chunks)
    for a, b in zip(ref, got, strict=True):
        np.testing.assert_allclose(b, a, rtol=2e-5, atol=2e-5)


def test_int8_selects_nearly_what_float32_selects():
    text = make_text(hd=64)
    opts = dict(tau=0.8, hamming=6, sink=4, recent=16, dense_below=0)
    caches = {r: build("resv", text, reps=r, **opts) for r in ("f32", "int8")}
    last = {r: fill(c, text, [10] * 40) for r, c in caches.items()}
    q, p = last["f32"]
    qs = scoring_queries(caches["f32"], q, p)
    keep = {r: c.store.score(qs, 0.8)[0] for r, c in caches.items()}
    both = (keep["f32"] & keep["int8"]).sum()
    either = (keep["f32"] | keep["int8"]).sum()
    assert both / either > 0.9, (both, either)


def test_int8_reps_need_one_level_tables_on_the_host_backend():
    for bad in (dict(accel="dre-emu"), dict(fine=64), dict(score="prefilter")):
        with pytest.raises(ConfigError, match="reps=int8"):
            build("resv", make_text(), reps="int8", **bad)
    with pytest.raises(ConfigError):
        build("resv", make_text(), reps="int4")


def test_auto_is_int8_on_the_host_and_the_backends_own_arithmetic_elsewhere():
    assert ReSVOptions().reps == "int8"
    assert ReSVOptions(accel="dre-emu").reps == "f32"
    assert ReSVOptions(fine=64).reps == ReSVOptions(score="prefilter").reps == "f32"
    assert ReSVOptions.parse({"reps": "f32"}).reps == "f32"


def test_a_stream_kept_before_int8_reps_resumes_only_with_float32_reps(tmp_path):
    """A kept store's options recorded no `reps`: it ran with float32 representatives."""
    before = {k: v for k, v in ReSVOptions().resolved().items() if k != "reps"}
    kept = {"model": "m", "layers": 1, "kv_heads": 1, "head_dim": 8, "policy": "resv", "options": before}
    now = {**kept, "options": ReSVOptions().resolved()}
    o = ReSVOptions
    with pytest.raises(KVStoreError, match="reps=f32, now int8"):
        _check_meta(tmp_path, kept, now, o.result_options(), o.absent_values())
    now["options"] = ReSVOptions(reps="f32").resolved()
    _check_meta(tmp_path, kept, now, o.result_options(), o.absent_values())
