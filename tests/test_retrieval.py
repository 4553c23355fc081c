"""Retrieval policies on random streams: parity with FullKV, clustering/selection invariants, positions."""

from __future__ import annotations

import numpy as np
import pytest

from vrex_edge.bundle import TextSpec
from vrex_edge.errors import ConfigError
from vrex_edge.runtime.retrieval import FullKV, make_policy
from vrex_edge.runtime.retrieval.resv import ReSVOptions
from vrex_edge.runtime.rope import Rope
from vrex_edge.testing.tiny import layer_text


def make_text(*, h: int = 4, kvh: int = 2, hd: int = 16, max_positions: int = 4096) -> TextSpec:
    return layer_text(h=h, kvh=kvh, hd=hd, max_positions=max_positions)


def stream(rng: np.random.Generator, text: TextSpec, chunks: list[int], *, pool: int = 6, noise: float = 0.05):
    """Chunks of (q, k, v, phase): keys drawn around a few centroids per KV head, so clusters form."""
    cent = rng.standard_normal((text.num_kv_heads, pool, text.head_dim)).astype(np.float32)
    for n in chunks:
        pick = rng.integers(0, pool, size=(text.num_kv_heads, n))
        k = np.take_along_axis(cent, pick[..., None], axis=1)
        k = (k + noise * rng.standard_normal(k.shape)).astype(np.float32)  # [KVH, n, hd]
        v = rng.standard_normal(k.shape).astype(np.float32)
        q = rng.standard_normal((text.num_heads, n, text.head_dim)).astype(np.float32)
        yield q, k, v, ("decode" if n == 1 else "prefill")


def run(cache, text, chunks, seed=0, **kw):
    rng = np.random.default_rng(seed)
    outs, pos = [], 0
    for q, k, v, phase in stream(rng, text, chunks, **kw):
        p = np.arange(pos, pos + q.shape[1])
        outs.append(cache.attend(q, k, v, p, phase=phase))
        pos += q.shape[1]
    return outs


def build(name: str, text: TextSpec, **options):
    return make_policy(name, **options)(0, text, Rope(text.rope))


CHUNKINGS = [
    [10] * 30,
    [37] + [10] * 12 + [1] * 15 + [10] * 8 + [1] * 5,
    [1] * 40 + [64] + [3, 7, 1, 1, 11] * 6,
]
RESV_VARIANTS = [
    dict(),
    dict(keys="pre", hamming=8, horizon=4, max_cluster=5, sink=4, recent=16),
    dict(keys="post", hamming=12, horizon=2, max_cluster=3, sink=0, recent=0, bits=70),
    dict(keys="pre", hamming=6, horizon=64, max_cluster=64, sink=8, recent=9),
    dict(keys="pre", score_keys="post", hamming=6, horizon=8, max_cluster=8, sink=3, recent=12),
    dict(keys="post", score_keys="pre", hamming=10, positions="compact", sink=3, recent=12),
    dict(hamming=6, cluster_batch=7, reselect=3, sink=5, recent=10),
    dict(dense_below=0, hamming=6, sink=4, recent=16),  # scoring + incremental gather from the first call
    dict(dense_below=0, incremental=0, keys="pre", hamming=6, sink=4, recent=16),
]


@pytest.mark.parametrize("chunks", CHUNKINGS)
@pytest.mark.parametrize("opts", RESV_VARIANTS)
def test_resv_tau1_equals_full(chunks, opts):
    text = make_text()
    ref = run(FullKV(text, Rope(text.rope)), text, chunks)
    got = run(build("resv", text, tau=1.0, **opts), text, chunks)
    for a, b in zip(ref, got, strict=True):
        np.testing.assert_allclose(b, a, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("chunks", CHUNKINGS[:2])
def test_dense_fallback_equals_full(chunks):
    """While the history is below dense_below, resv attends to all of it whatever tau is."""
    text = make_text()
    ref = run(FullKV(text, Rope(text.rope)), text, chunks)
    cache = build("resv", text, tau=0.3, hamming=6, sink=4, recent=16, dense_below=10**6)
    got = run(cache, text, chunks)
    for a, b in zip(ref, got, strict=True):
        np.testing.assert_allclose(b, a, rtol=2e-5, atol=2e-5)
    st = cache.stats()
    assert (st.kept == st.history).all()
    cache = build("resv", text, tau=0.3, hamming=6, sink=4, recent=16, dense_below=100)
    run(cache, text, [10] * 30)  # past the threshold it selects again
    st = cache.stats()
    assert (st.kept < st.history).all() and cache.last_mass is not None


@pytest.mark.parametrize(
    "opts", [dict(), dict(cluster_batch=7, reselect=3), dict(max_cluster=4, horizon=4, keys="pre")]
)
def test_incremental_gather_equals_full_gather(opts):
    """The buffer kept across calls (incremental=1) attends to the same tokens as gathering afresh."""
    text = make_text()
    chunks = CHUNKINGS[1] + [10] * 25 + [64] + [10] * 10  # a growing selection reallocates the buffer
    caches = [
        build("resv", text, tau=0.7, hamming=6, sink=4, recent=16, dense_below=0, incremental=i, **opts) for i in (0, 1)
    ]
    ref, got = (run(c, text, chunks) for c in caches)
    for a, b in zip(ref, got, strict=True):
        np.testing.assert_allclose(b, a, rtol=2e-5, atol=2e-5)
    for phase in ("prefill", "decode"):
        assert np.array_equal(caches[0].totals[phase].kept, caches[1].totals[phase].kept)
    assert caches[1].gatherer is not None and caches[1].gatherer.n.sum() > 0


@pytest.mark.parametrize("chunks", CHUNKINGS[:2])
def test_topk_all_and_huge_window_equal_full(chunks):
    text = make_text(h=6, kvh=3)
    ref = run(FullKV(text, Rope(text.rope)), text, chunks)
    for name, opts in [
        ("topk", dict(k=1.0)),
        ("topk", dict(k=10_000, recent=5, sink=2)),
        ("window", dict(recent=100_000)),
    ]:
        got = run(build(name, text, **opts), text, chunks)
        for a, b in zip(ref, got, strict=True):
            np.testing.assert_allclose(b, a, rtol=2e-5, atol=2e-5)


def test_window_keeps_only_sink_and_recent():
    text = make_text()
    cache = build("window", text, sink=4, recent=20)
    run(cache, text, [10] * 8)
    st = cache.stats()
    assert st.history == 70 and (st.kept == 24).all()


def test_topk_keeps_k_blocks_shared_by_heads():
    text = make_text()
    cache = build("topk", text, k=3, sink=0, recent=10)
    run(cache, text, [10] * 12)  # 11 chunks of history before the last, 10 of them outside the window
    st = cache.stats()
    assert (st.kept == 3 * 10 + 10).all()
    frac = build("topk", text, k=0.5, sink=0, recent=10)
    run(frac, text, [10] * 12)
    assert (frac.stats().kept == 5 * 10 + 10).all()


@pytest.mark.parametrize("opts", RESV_VARIANTS)
def test_clustering_invariants(opts):
    text = make_text()
    opts = {**dict(hamming=6, recent=128), **opts}  # a window shorter than the stream, whatever the default
    cache = build("resv", text, **opts)
    chunks = [37] + [10] * 20 + [1] * 9
    run(cache, text, chunks)
    st, o = cache.store, ReSVOptions.parse(opts).resolved()
    n_hist = sum(chunks) - min(o["sink"], sum(chunks)) - cache.ring.n
    assert o["recent"] <= cache.ring.n < o["recent"] + o.get("cluster_batch", 1)  # the recent window
    for h in range(text.num_kv_heads):
        pos, owner = st.members(h)
        assert np.array_equal(np.sort(pos), np.arange(o["sink"], o["sink"] + n_hist))  # each token once
        c = int(st.nclu[h])
        assert np.array_equal(np.bincount(owner, minlength=c), st.counts[h, :c])
        assert st.counts[h, :c].max() <= o["max_cluster"]
    # representative = mean of the member clustering keys, and codes within the Hamming threshold
    from vrex_edge.accel.host import hamming

    rng = np.random.default_rng(0)
    raw = np.concatenate([k for _, k, _, _ in stream(rng, text, chunks)], axis=1)  # [KVH, N, hd] un-rotated
    rot = Rope(text.rope).apply(raw, np.arange(raw.shape[1]))
    hashed = rot if o.get("keys", "post") == "post" else raw
    scored = rot if o.get("score_keys", o.get("keys", "post")) == "post" else raw
    for h in range(text.num_kv_heads):
        pos, owner = st.members(h)
        c = int(st.nclu[h])
        sums = np.zeros((c, text.head_dim))
        np.add.at(sums, owner, scored[h, pos])
        np.testing.assert_allclose(st.means[h, :c], sums / st.counts[h, :c, None], rtol=1e-4, atol=1e-5)
        codes = st.backend.hash_codes(hashed[h, pos], st.planes[h])  # [N, W]
        d = np.array([hamming(codes[i : i + 1], st.codes[h, owner[i] : owner[i] + 1])[0, 0] for i in range(pos.size)])
        assert d.max() <= o["hamming"]
    assert (st.nclu < n_hist).all()  # the centroid stream does form multi-token clusters


@pytest.mark.parametrize("tau", [0.5, 0.8, 0.95])
def test_selection_is_minimal_prefix(tau):
    text = make_text()
    cache = build("resv", text, tau=tau, hamming=6, sink=4, recent=10, dense_below=0)
    run(cache, text, [10] * 30)
    mass, nsel = cache.last_mass, cache.last_nsel
    for h in range(text.num_kv_heads):
        m = np.sort(mass[h])[::-1]
        total = m.sum(dtype=np.float64)
        k = int(nsel[h])
        assert m[:k].sum(dtype=np.float64) >= tau * total * (1 - 1e-6)
        assert m[: k - 1].sum(dtype=np.float64) < tau * total * (1 + 1e-6)
        # the kept clusters are the k heaviest and their tokens are what the head attended
        sel = cache.last_sel[h]
        assert np.isclose(mass[h, sel].sum(dtype=np.float64), m[:k].sum(dtype=np.float64))
        now = cache.store.counts[h, sel].sum()  # the 10 tokens absorbed after attending may have joined
        assert now - 10 <= cache.stats().kept[h] - 4 - 10 <= now
    st = cache.stats()
    assert (st.kept < st.history).all()


def test_per_head_counts_follow_mass():
    """Head 0's queries point at one centroid (peaked mass), head 1's queries are ~0 (flat)."""
    text = make_text(h=2, kvh=2)
    cache = build("resv", text, tau=0.9, hamming=6, sink=0, recent=10, keys="pre", dense_below=0)
    rng = np.random.default_rng(1)
    pos = 0
    for q, k, v, phase in stream(rng, text, [10] * 40):
        q[0] = 8 * k[0, :1]  # aligned with one of head 0's centroids
        q[1] = 0.0
        cache.attend(q, k, v, np.arange(pos, pos + 10), phase=phase)
        pos += 10
    kept = cache.stats().kept
    assert kept[0] < 0.5 * kept[1]


def test_phase_totals_separate():
    text = make_text()
    cache = build("resv", text, tau=0.9)
    run(cache, text, [10] * 20 + [1] * 7)
    assert cache.totals["prefill"].calls == 20 and cache.totals["decode"].calls == 7
    assert set(cache.stats().seconds) == {"cluster", "select", "gather", "attend"}


@pytest.mark.parametrize(
    "name,opts",
    [("resv", dict(tau=1.0, sink=4, recent=16)), ("window", dict(recent=10**6)), ("topk", dict(k=1.0, recent=8))],
)
def test_compact_equals_absolute_only_without_skips(name, opts):
    text = make_text()
    chunks = [10] * 15 + [1] * 5
    a = run(build(name, text, positions="absolute", **opts), text, chunks)
    c = run(build(name, text, positions="compact", **opts), text, chunks)
    for x, y in zip(a, c, strict=True):  # everything attended: relative distances unchanged
        np.testing.assert_allclose(y, x, rtol=1e-4, atol=1e-4)
    # once tokens are skipped, compact positions close the gaps and the outputs differ
    a = run(build("window", text, positions="absolute", sink=4, recent=20), text, chunks)
    c = run(build("window", text, positions="compact", sink=4, recent=20), text, chunks)
    assert np.allclose(a[2], c[2], atol=1e-5) and not np.allclose(a[-1], c[-1], atol=1e-3)


def test_compact_positions_stay_in_context_on_long_stream():
    text = make_text(max_positions=256)
    cache = build("resv", text, tau=1.0, positions="compact", sink=8, recent=40, reselect=2)
    outs = run(cache, text, [10] * 100)  # 1000 tokens, ~4x the context
    st = cache.stats()
    assert st.history == 990 and (st.kept + 10 <= 256).all()  # whole clusters are dropped to fit
    assert (st.kept > 256 - 10 - 32).all()
    cache = build("resv", text, tau=0.5, positions="compact", sink=8, recent=40, reselect=3, cluster_batch=16)
    run(cache, text, [10] * 100)
    assert (cache.stats().kept + 10 <= 256).all()
    assert all(np.isfinite(o).all() for o in outs)


@pytest.mark.parametrize("positions", ["absolute", "compact"])
def test_max_kept_caps_each_head_with_its_heaviest_clusters(positions):
    text = make_text()
    base = dict(tau=0.9, hamming=6, sink=4, recent=10, keys="pre", positions=positions, cluster_batch=1)
    free = build("resv", text, **base)
    a = run(free, text, [10] * 40)
    most = int(free.stats().kept.max()) - 4 - 10  # retrieved tokens of the widest head, last call
    same = run(build("resv", text, max_kept=most + 100, **base), text, [10] * 40)
    for x, y in zip(a, same, strict=True):  # a cap above every selection changes nothing
        np.testing.assert_array_equal(x, y)
    cap = max(1, most // 3)
    capped = build("resv", text, max_kept=cap, **base)
    run(capped, text, [10] * 40)
    kept = capped.stats().kept - 4 - 10  # [KVH] retrieved tokens
    assert (kept <= cap).all() and (kept > 0).all()
    for h in range(text.num_kv_heads):  # the retrieved clusters are the heaviest of the selection
        m, sel = capped.last_mass[h], capped.last_sel[h]
        outside = np.setdiff1d(np.flatnonzero(m), sel)
        inside = sel[sel < m.size]
        if outside.size and inside.size:
            assert m[inside].min() >= m[outside].max() * (1 - 1e-6)


def test_decode_reselect_reuses_a_selection_within_decode_only():
    """decode_reselect=3: a decode call selects anew every third call (the calls between reuse its selection
    plus the clusters opened since, without scoring); prefill calls select on every call, as with the default."""
    text = make_text()
    base = dict(tau=0.6, hamming=6, sink=4, recent=10, keys="pre", cluster_batch=1)
    ref = build("resv", text, **base)
    cache = build("resv", text, decode_reselect=3, **base)
    rng = np.random.default_rng(3)
    chunks = [10] * 20 + [1] * 7 + [10] * 3 + [1] * 2
    pos, scored = 0, []
    for q, k, v, phase in stream(rng, text, chunks):
        p = np.arange(pos, pos + q.shape[1])
        before, clustered = cache.last_mass, int(cache.store.nclu.max()) > 0
        reused = cache.reused_selection(phase)
        if reused is not None:  # the tokens of the reused clusters, before the call absorbs any
            want = [int(cache.store.counts[h, s].sum()) for h, s in enumerate(reused)]
            around = cache.sink_n + cache.ring.n  # sink and window, attended beside them
        a, b = ref.attend(q, k, v, p, phase=phase), cache.attend(q, k, v, p, phase=phase)
        scored.append(cache.last_mass is not before)  # a new selection sets new masses
        if clustered:
            assert (reused is None) == scored[-1]
        if reused is not None:  # the attended clusters are the reused ones
            np.testing.assert_array_equal(cache.stats().kept - around, want)
        if phase == "prefill" or scored[-1]:
            np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)  # a fresh selection: the default's output
        pos += q.shape[1]
    assert scored[2:20] == [True] * 18  # prefill: every call once there are clusters
    assert scored[20:27] == [True, False, False, True, False, False, True]  # decode: every third call
    assert scored[27:30] == [True] * 3 and scored[30:] == [True, False]  # a new phase resets the reuse


def test_bad_options_are_config_errors():
    with pytest.raises(ConfigError, match="unknown option"):
        make_policy("resv", taus=0.5)
    with pytest.raises(ConfigError, match="tau"):
        make_policy("resv", tau=1.5)
    with pytest.raises(ConfigError, match="positions"):
        build("window", make_text(), positions="relative")
    with pytest.raises(ConfigError, match="k must be"):
        make_policy("topk", k=0)
    with pytest.raises(Exception, match="unknown retrieval backend"):
        make_policy("resv", accel="nope")


def test_extend_then_attend_equals_full():
    text = make_text()
    rng = np.random.default_rng(5)
    chunks = list(stream(rng, text, [10] * 21))
    k = np.concatenate([c[1] for c in chunks[:20]], axis=1)
    v = np.concatenate([c[2] for c in chunks[:20]], axis=1)
    full = FullKV(text, Rope(text.rope))
    full.k.append(Rope(text.rope).apply(k, np.arange(200)))
    full.v.append(v)
    q, kn, vn, _ = chunks[20]
    ref = full.attend(q, kn, vn, np.arange(200, 210), phase="prefill")
    for name, opts in [("resv", dict(tau=1.0, hamming=6, sink=4, recent=16)), ("topk", dict(k=1.0, recent=16))]:
        cache = build(name, text, **opts)
        cache.extend(k, v, np.arange(200), chunk=10)
        assert cache.length == 200
        got = cache.attend(q, kn, vn, np.arange(200, 210), phase="prefill")
        np.testing.assert_allclose(got, ref, rtol=2e-5, atol=2e-5)


def test_model_stream_with_policies(tiny_llama_bundle):
    """Through the real engine: resv (tau 1) and topk (all) reproduce full's logits chunk by chunk;
    compact resv keeps producing finite logits on a stream several times the context."""
    from vrex_edge.runtime.engine import load_model

    model = load_model(tiny_llama_bundle)
    rng = np.random.default_rng(0)
    n = 160
    emb = model.embed(rng.integers(8, model.text.vocab_size, n))  # [n, D]
    sizes = [10] * 12 + [1] * 10 + [30]

    def logits(policy: str, **opts) -> np.ndarray:
        caches = model.make_caches(make_policy(policy, **opts))
        rows, s = [], 0
        for m in sizes:
            rows.append(
                model.head(
                    model.forward(emb[s : s + m], np.arange(s, s + m), caches, "decode" if m == 1 else "prefill")
                )
            )
            s += m
        return np.concatenate(rows)

    ref = logits("full")
    np.testing.assert_allclose(logits("resv", tau=1.0, sink=4, recent=16, hamming=8), ref, atol=1e-4, rtol=0)
    np.testing.assert_allclose(logits("topk", k=1.0, sink=4, recent=16), ref, atol=1e-4, rtol=0)
    ctx = model.text.max_positions
    caches = model.make_caches(make_policy("resv", tau=0.9, sink=4, recent=16, positions="compact"))
    total = 0
    while total < 3 * ctx:
        m = 10
        ids = rng.integers(8, model.text.vocab_size, m)
        out = model.head(model.forward(model.embed(ids), np.arange(total, total + m), caches, "prefill"))
        total += m
    assert np.isfinite(out).all() and all((c.stats().kept + 10 <= ctx).all() for c in caches)


@pytest.mark.parametrize("positions", ["absolute", "compact"])
def test_two_level_tables_bound_the_resident_representatives(positions):
    """fine > 0: old clusters retire in blocks; with tau_coarse = 1 every block is kept, so the
    two-level selection is the one-level one, bit for bit."""
    text = make_text()
    base = dict(
        tau=0.9,
        hamming=6,
        sink=4,
        recent=10,
        keys="pre",
        horizon=8,
        max_cluster=8,
        positions=positions,
        cluster_batch=1,
    )
    ref = run(build("resv", text, reps="f32", **base), text, [10] * 60)  # two-level tables score float32
    two = build("resv", text, fine=16, block=4, tau_coarse=1.0, **base)
    got = run(two, text, [10] * 60)
    for a, b in zip(ref, got, strict=True):
        np.testing.assert_array_equal(a, b)
    st = two.store
    assert (st.nblk > 4).all() and (st.lo == 4 * st.nblk).all()
    assert (st.nclu - st.lo <= 16 + 8 + 4).all()  # each head's resident window
    for h in range(text.num_kv_heads):  # a block: the token-weighted mean of its clusters and their token count
        for j in range(int(st.nblk[h])):
            ids = np.arange(4 * j, 4 * j + 4)
            fine = st.archive.get(h, np.array([j]))[0]
            cnt = st.counts[h, ids]
            assert st.ccounts[h, j] == cnt.sum()
            np.testing.assert_allclose(
                st.cmeans_t[h, :, j], (fine * cnt[:, None]).sum(0) / cnt.sum(), rtol=1e-5, atol=1e-6
            )
    q = np.random.default_rng(1).standard_normal((text.num_kv_heads, 3, text.head_dim)).astype(np.float32)
    st.tau_coarse = 0.5  # a coarse cut: old clusters only from the blocks it keeps
    nb = int(st.nblk.max())
    blocks, _ = st.backend.score_select(q, st.cmeans_t[:, :, :nb].swapaxes(1, 2), st.ccounts[:, :nb], tau=0.5)
    cut, _ = st.score(q, tau=0.9)
    for h in range(text.num_kv_heads):
        old = np.flatnonzero(cut[h, : st.lo[h]]) // 4
        assert np.isin(old, np.flatnonzero(blocks[h])).all() and not blocks[h].all()


def test_two_level_selection_scores_a_bounded_candidate_set():
    """With a budget, the fine clusters scored come from the heaviest kept blocks holding at most
    CANDIDATES x budget tokens (plus the resident window), however long the stream: a frame's work
    on an endless stream stays bounded. Without one, every kept block is a candidate."""
    from vrex_edge.runtime.retrieval.clusters import CANDIDATES

    text = make_text()
    base = dict(tau=0.9, hamming=6, sink=4, recent=10, keys="pre", horizon=8, max_cluster=8)
    cache = build("resv", text, fine=16, block=4, tau_coarse=1.0, **base)
    run(cache, text, [10] * 120)
    st = cache.store
    seen: list[int] = []
    real = st.backend.score_select

    def spy(q, reps, counts, tau):
        seen.append(int((counts > 0).sum(1).max()))  # candidates of the busiest head
        return real(q, reps, counts, tau=tau)

    st.backend.score_select = spy
    q = np.random.default_rng(2).standard_normal((text.num_kv_heads, 3, text.head_dim)).astype(np.float32)
    try:
        st.score(q, tau=0.9)
        every = seen[-1]
        budget = 12
        keep, mass = st.score(q, tau=0.9, budget=budget)
    finally:
        st.backend.score_select = real
    window = int((st.nclu - st.lo).max())
    assert every > window + CANDIDATES * budget  # uncapped: all retired clusters are candidates
    assert seen[-1] <= window + CANDIDATES * budget  # capped: each candidate cluster holds >= 1 token
    for h in range(text.num_kv_heads):  # old clusters only from blocks whose tokens fit the cap
        old = np.unique(np.flatnonzero(mass[h, : st.lo[h]] > 0) // 4)
        assert st.ccounts[h, old].sum() <= CANDIDATES * budget


def test_layers_double_their_arrays_in_different_frames():
    """Layers fill in lockstep; with staggered first capacities at most one layer's k/v arrays of 4K
    tokens or more double (copy their whole history) in any 10-token frame up to 60K tokens, where
    equal capacities made all 30 layers copy in the same frame."""
    from vrex_edge.runtime.arrays import staggered
    from vrex_edge.runtime.kvcache import GrowingArray

    for base in (256, 1024):
        arrays = [GrowingArray(1, 1, staggered(base, layer)) for layer in range(30)]
        chunk = np.zeros((1, 10, 1), np.float32)
        worst = 0
        for _ in range(6000):
            before = [a.buf.shape[1] for a in arrays]
            for a in arrays:
                a.append(chunk)
            worst = max(worst, sum(a.buf.shape[1] != b >= 4096 for a, b in zip(arrays, before, strict=True)))
        assert worst == 1
    text = make_text()
    caches = [make_policy("full")(layer, text, Rope(text.rope)) for layer in range(3)]
    assert len({c.k.buf.shape[1] for c in caches}) == 3  # the policy staggers its layers


def test_heaviest_equals_a_stable_sort_of_the_whole_selection():
    """heaviest sorts only the clusters that can fit; its answer is that of sorting all of them
    (ties in the selection's order, zero-count clusters, ids past the masses)."""
    from vrex_edge.runtime.retrieval.clusters import heaviest

    def by_full_sort(sel, mass, counts, budget):
        w = np.where(sel < mass.size, mass[np.minimum(sel, mass.size - 1)], 0.0)
        order = sel[np.argsort(-w, kind="stable")]
        return order[: int(np.searchsorted(np.cumsum(counts[order]), budget, side="right"))]

    rng = np.random.default_rng(3)
    for t in range(400):
        c = int(rng.integers(1, 2000))
        mass = rng.random(c).astype(np.float32)
        if t % 3 == 0:
            mass = np.round(mass * 10) / 10  # many ties
        counts = rng.integers(0 if t % 7 == 0 else 1, 4, c + 50)
        sel = np.sort(rng.choice(c + 50, size=int(rng.integers(0, c)), replace=False))
        budget = int(rng.integers(0, 1500))
        assert np.array_equal(heaviest(sel, mass, counts, budget), by_full_sort(sel, mass, counts, budget))
