"""KV tiers: budget, exact parity with all-resident ReSV, prefetch, faults, keep/resume."""

from __future__ import annotations

import errno
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest

from tests.terminal import answers, ask_until_done, spawn_cli
from tests.test_retrieval import make_text, stream
from vrex_edge.errors import VrexError
from vrex_edge.runtime.kvstore import KVStoreError, TierConfig, TierManager, parse_bytes
from vrex_edge.runtime.kvstore.resume import FORMAT
from vrex_edge.runtime.retrieval import make_policy
from vrex_edge.runtime.rope import Rope

# dense_below=0: select from the first cluster on; incremental=0: the resident reference gathers
# in arena order, as the tiers do, so outputs must match bit for bit.
# cluster_batch=1: the budgets and the bound arithmetic below are for a window of exactly `recent`.
OPTS = dict(
    dense_below=0, incremental=0, sink=4, recent=16, hamming=6, tau=0.6, horizon=16, max_cluster=16, cluster_batch=1
)


def layer_caches(text, layers: int, **opts):
    f = make_policy("resv", **{**OPTS, **opts})
    rope = Rope(text.rope)
    return [f(i, text, rope) for i in range(layers)]


def tiered_caches(text, layers: int, config: TierConfig, **opts):
    """Caches built over a TierManager's storage, bound to it -> (caches, manager)."""
    mgr = TierManager(config, layers=layers, kvh=text.num_kv_heads, hd=text.head_dim)
    f = make_policy("resv", **{**OPTS, **opts})
    rope = Rope(text.rope)
    caches = [f(i, text, rope, mgr.storage) for i in range(layers)]
    mgr.bind(caches)
    return caches, mgr


def feed(caches, text, chunks, *, mgr=None, budget=None, seed=0):
    """Every layer attends the same stream; checks resident KV <= budget after every call."""
    rng = np.random.default_rng(seed)
    outs, pos = [], 0
    for q, k, v, phase in stream(rng, text, chunks, pool=12, noise=0.2):
        p = np.arange(pos, pos + q.shape[1])
        pos += q.shape[1]
        for c in caches:
            outs.append(c.attend(q, k, v, p, phase=phase))
            if mgr is not None and budget is not None:
                assert mgr.resident()["kv"] <= budget
    return outs


CHUNKS = [10] * 120 + [1] * 10 + [10] * 40


@pytest.mark.parametrize(
    "opts,budget",
    [
        (dict(), 800_000),
        (dict(positions="compact", keys="pre"), 800_000),
        (dict(cluster_batch=5, reselect=2), 800_000),
        (dict(incremental=1), 1_000_000),
        (dict(incremental=1), 650_000),
        (dict(incremental=1), 500_000),
        (dict(incremental=1), 400_000),
        (dict(positions="compact", keys="pre"), 400_000),
        (dict(fine=24, block=4, tau_coarse=0.9), 800_000),
        (dict(fine=24, block=4, positions="compact", keys="pre"), 400_000),
    ],
)
def test_tiered_equals_resident_under_a_small_budget(opts, budget, tmp_path: Path):
    text = make_text(max_positions=8192)
    ref = feed(layer_caches(text, 2, **opts), text, CHUNKS)
    caches, mgr = tiered_caches(text, 2, TierConfig(budget=budget, root=tmp_path, prefetch=False), **opts)
    got = feed(caches, text, CHUNKS, mgr=mgr, budget=budget)
    rep = mgr.report()
    for a, b in zip(ref, got, strict=True):
        if opts.get("incremental"):  # per-layer buffers: the same rows, maybe in another order
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        else:
            assert np.array_equal(a, b)
    assert rep["peak"] <= budget and rep["kv"] <= budget
    assert rep["evicted"] > 0 and rep["fetched"] > 0  # the cold tier was really used
    if budget <= 400_000:  # a selection larger than the hot cache goes in runs that fit, still exact
        assert rep["runs"] > 0
    if opts.get("incremental") and budget >= 1_000_000:  # per-layer buffers while they fit
        assert rep["own_buffers"] == 2
    if opts.get("incremental") and budget <= 500_000:  # else the shared workspace
        assert rep["own_buffers"] < 2
    assert rep["cold_bytes"] > 0 and rep["tables"] > 0
    if opts.get("fine"):  # old representatives retired to the cold tier and read back to select
        assert rep["retired"]["blocks"] > 0 and rep["retired"]["reads"] > 0
    folder = Path(rep["folder"])
    assert any(folder.iterdir())
    mgr.close()
    assert not folder.exists()  # a temporary store is removed


def test_budget_below_the_fixed_bound_is_refused_up_front(tmp_path: Path):
    """Sink, recent window and open clusters at their largest, the smallest attended set, one hot
    cluster: a budget below their sum is refused when the caches are bound, before any token,
    naming the minimum and the options behind it; nothing is left behind."""
    text = make_text()
    for budget in (1_000, 60_000):
        with pytest.raises(KVStoreError) as e:
            tiered_caches(text, 1, TierConfig(budget=budget, root=tmp_path))
        msg = str(e.value)
        assert re.fullmatch(
            r"--kv-budget \d+ KiB is below the (\d+) KiB these options always keep resident \(.*"
            r"open tokens per head: open_rows 256 \(horizon 16 x max_cluster 16 at most\)\); "
            r"give --kv-budget (\d+)K or more, or lower open_rows, recent or cluster_batch",
            msg,
        ), msg
        assert "\n" not in msg
    assert not any(tmp_path.iterdir())
    keep = tmp_path / "kept"
    with pytest.raises(KVStoreError, match="is below the"):
        tiered_caches(text, 1, TierConfig(budget=60_000, keep=keep))
    assert not keep.exists()  # the --keep-kv folder this run made is gone again
    # the bound is what the sizes of the parts say it is: sink + ring + open areas at their largest
    _, probe = tiered_caches(text, 1, TierConfig(root=tmp_path))
    b, c = probe.bound, probe.caches[0]
    row = 2 * text.head_dim * 4 + 16  # an open row: k, v, pos, owner
    assert b.open == (text.num_kv_heads + 1) * (16 * 15 + 64) * row
    assert b.window == c.sink_k.nbytes + c.sink_v.nbytes + 2 * (16 + 64) * text.num_kv_heads * text.head_dim * 8
    assert b.hot == 16 * (2 * text.head_dim + 2) * 4
    probe.close()
    with pytest.raises(KVStoreError, match="is below the"):  # one byte less is not
        tiered_caches(text, 1, TierConfig(budget=b.minimum - 1, root=tmp_path))
    # exactly the bound is accepted, and a stream that selects nearly everything runs to its end in it
    caches, mgr = tiered_caches(text, 1, TierConfig(budget=b.minimum, root=tmp_path, prefetch=False), tau=0.99)
    feed(caches, text, [10] * 200, mgr=mgr, budget=b.minimum)
    assert mgr.report()["peak"] <= b.minimum
    mgr.close()
    assert not any(tmp_path.iterdir())


def test_a_budget_that_ran_out_mid_stream_now_finishes(tmp_path: Path):
    """tau 0.99 selects nearly all of a growing history: at 500 KB this stream used to end at ~1,250
    tokens with "budget too small". The attended set is now capped to what the budget leaves beside
    the fixed parts (heaviest clusters first), so it runs to its end within the budget; an explicit
    max_kept below that cap still wins and changes nothing against all-resident ReSV."""
    text = make_text(max_positions=8192)
    chunks = [10] * 300
    for inc in (0, 1):
        caches, mgr = tiered_caches(
            text, 2, TierConfig(budget=500_000, root=tmp_path, prefetch=False), tau=0.99, incremental=inc
        )
        feed(caches, text, chunks, mgr=mgr, budget=500_000)
        st = caches[0].stats()
        assert st.history == 2990 and int(st.kept.max()) < st.history - 2 * 16  # the cap held it back
        assert mgr.report()["peak"] <= 500_000
        mgr.close()
    ref = feed(layer_caches(text, 2, tau=0.99, max_kept=64), text, chunks)
    caches, mgr = tiered_caches(
        text, 2, TierConfig(budget=500_000, root=tmp_path, prefetch=False), tau=0.99, max_kept=64
    )
    got = feed(caches, text, chunks, mgr=mgr, budget=500_000)
    assert all(np.array_equal(a, b) for a, b in zip(ref, got, strict=True))
    assert all(int(c.stats().kept.max()) <= 4 + 64 + 16 for c in caches)
    mgr.close()


def test_parse_bytes():
    assert parse_bytes("512M") == 512 << 20
    assert parse_bytes("2G") == 2 << 30
    assert parse_bytes("1.5GiB") == int(1.5 * (1 << 30))
    assert parse_bytes("4096") == 4096
    with pytest.raises(VrexError):
        parse_bytes("lots")


class QuotaWriter:
    """os.pwrite until `quota` bytes were written, then ENOSPC (a full disk); or always `err`."""

    def __init__(self, quota: int, err: int = errno.ENOSPC):
        self.quota, self.err, self.used = quota, err, 0

    def __call__(self, fd, data, off):
        import os

        if self.used + len(data) > self.quota:
            raise OSError(self.err, os.strerror(self.err))
        self.used += len(data)
        return os.pwrite(fd, data, off)


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EIO])
def test_write_failure_ends_with_a_clear_error(err, tmp_path: Path):
    text = make_text()
    caches, mgr = tiered_caches(
        text, 2, TierConfig(budget=None, root=tmp_path, prefetch=False, writer=QuotaWriter(20_000, err))
    )
    with pytest.raises(KVStoreError, match="disk is full" if err == errno.ENOSPC else "write failed"):
        feed(caches, text, [10] * 60)
    mgr.close(ok=False)
    assert not any(tmp_path.iterdir())


def test_full_disk_can_drop_the_oldest_clusters(tmp_path: Path):
    text = make_text()
    quota = QuotaWriter(60_000)
    caches, mgr = tiered_caches(
        text,
        2,
        TierConfig(
            budget=None, root=tmp_path, prefetch=False, on_full="drop-oldest", segment_bytes=8_000, writer=quota
        ),
    )

    class Freeing:  # deleting a segment frees its bytes
        def __call__(self, fd, data, off):
            quota.used = sum(s.rows * lg.row_bytes for lg in mgr.logs for s in lg.segments)
            return quota(fd, data, off)

    for lg in mgr.logs:
        lg.write_fn = Freeing()
    feed(caches, text, [10] * 80)
    rep = mgr.report()
    assert rep["dropped"] > 0 and rep["cold_bytes"] > 60_000
    for c in caches:  # dropped clusters are never selected again
        assert (c.store.counts[c.store.start >= 0] >= 0).all()
    mgr.close()


def test_drop_oldest_adapts_segments_to_a_small_disk(tmp_path: Path, monkeypatch):
    import shutil as sh

    from vrex_edge.runtime.kvstore import tiers

    text = make_text()
    real = sh.disk_usage
    usage = lambda free: lambda p: real(p)._replace(free=free)  # noqa: E731
    monkeypatch.setattr(tiers.shutil, "disk_usage", usage(8 << 20))  # 8 MiB free: no room for 2 x 64 MiB per layer
    caches, mgr = tiered_caches(text, 2, TierConfig(budget=None, root=tmp_path, prefetch=False, on_full="drop-oldest"))
    assert all(lg.segment_rows * lg.row_bytes <= (8 << 20) // 8 for lg in mgr.logs)  # a quarter of the free space
    mgr.close()
    monkeypatch.setattr(tiers.shutil, "disk_usage", usage(100 << 10))  # less than two of the smallest segments
    with pytest.raises(KVStoreError, match="drop-oldest needs room"):
        tiered_caches(text, 2, TierConfig(budget=None, root=tmp_path, prefetch=False, on_full="drop-oldest"))
    assert not any(tmp_path.iterdir())


def _filled_log(tmp_path: Path, rows: int = 600):
    """A cold log of 4-dim heads, segments of 100 rows; global row g holds k = v = pos = g."""
    from vrex_edge.runtime.kvstore.cold import ColdLog

    log = ColdLog(tmp_path, 0, 4, segment_bytes=100 * 40, writer=None)
    for _ in range(rows // 50):  # sealed batches of 50 rows (a new segment starts one row after the last)
        nxt = log.next_row if not log.segments or log.segments[-1].rows + 50 <= 100 else log.next_row + 1
        r = np.arange(nxt, nxt + 50)
        k = np.repeat(r[:, None], 4, axis=1).astype(np.float32)
        assert log.append(log.record(k, k, r)) == nxt
    return log


@pytest.mark.parametrize("junk_bytes,iov_max", [(0, 512), (40 * 6, 512), (40 * 64, 512), (40 * 64, 4)])
def test_cold_reads_over_gaps_bring_the_right_rows(junk_bytes, iov_max, tmp_path: Path, monkeypatch):
    import os

    from vrex_edge.runtime.kvstore import cold

    log = _filled_log(tmp_path)
    assert len(log.segments) > 3  # reads must not run over a segment's end
    rng = np.random.default_rng(0)
    starts, counts = [], []
    for seg in log.segments:  # clusters of 1-5 rows, 0-12 rows apart, touching segment ends
        r = seg.base
        while r < seg.base + seg.rows:
            n = min(int(rng.integers(1, 6)), seg.base + seg.rows - r)
            if rng.random() < 0.6:
                starts.append(r)
                counts.append(n)
            r += n + int(rng.integers(0, 13)) * (rng.random() < 0.5)
    bufs = [np.full((n, log.rec), np.nan, np.float32) for n in counts]
    calls = []
    preadv = os.preadv
    monkeypatch.setattr(os, "preadv", lambda fd, iov, off: calls.append(len(iov)) or preadv(fd, iov, off))
    monkeypatch.setattr(cold, "IOV_MAX", iov_max)
    junk = np.empty(junk_bytes, np.uint8) if junk_bytes else None
    got = log.read_runs(np.array(starts), bufs, junk)
    assert got == sum(counts) * log.row_bytes
    for r, n, b in zip(starts, counts, bufs, strict=True):
        want = np.arange(r, r + n)
        assert np.array_equal(b[:, :8], np.repeat(want[:, None], 8, axis=1).astype(np.float32))
        assert np.array_equal(b[:, 8:].view(np.int64)[:, 0], want)
    runs = 1 + sum(s != a + n for a, n, s in zip(starts, counts, starts[1:], strict=False))  # exact adjacency
    assert max(calls) <= iov_max
    if junk_bytes == 0:
        assert len(calls) == runs
    elif iov_max == 512:
        assert len(calls) < runs  # runs a few rows apart share a call
    log.close()


def test_cold_read_hints_are_optional_and_short_files_still_fail_clearly(tmp_path: Path, monkeypatch):
    import os

    log = _filled_log(tmp_path, rows=200)

    def refuse(*a):
        raise OSError(22, "Invalid argument")

    monkeypatch.setattr(os, "posix_fadvise", refuse, raising=False)
    bufs = [np.empty((2, log.rec), np.float32) for _ in range(3)]
    log.read_runs(np.array([0, 10, 150]), bufs)
    assert bufs[2][0, 8:].view(np.int64)[0] == 150
    os.truncate(log.segments[-1].path, 10 * log.row_bytes)
    with pytest.raises(KVStoreError, match="truncated"):
        log.read_runs(np.array([0, 10, 180]), bufs, np.empty(400, np.uint8))
    log.close()


def test_eviction_takes_the_oldest_entries_as_a_full_sort_would():
    from vrex_edge.runtime.kvstore.hot import _oldest

    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(1, 5000))
        tk = rng.integers(0, int(rng.integers(1, 50)), n) + (rng.random(n) < 0.5) * (1 << 40)  # many ties
        sizes = rng.integers(500, 20_000, n)
        need = int(rng.integers(1, int(sizes.sum()) + 10_000))
        ref = np.argsort(tk, kind="stable")
        k = min(int(np.searchsorted(np.cumsum(sizes[ref]), need)) + 1, n)
        got = _oldest(tk, sizes, need)
        assert np.array_equal(got[:k], ref[:k])


def _present(hc) -> set[tuple[int, int, int]]:
    """(layer, KV head, cluster) of every entry a HotCache holds."""
    return {
        (li, h, int(c)) for li, rows in enumerate(hc.tick) for h, t in enumerate(rows) for c in np.flatnonzero(t >= 0)
    }


def test_eviction_is_oldest_first_over_share_layers_first():
    """HotCache evicts as a full stable sort of (over-share layers first, then tick) would."""
    from vrex_edge.runtime.kvstore.hot import HotCache

    rng = np.random.default_rng(1)
    for trial in range(20):
        hc = HotCache(4, 2, 10)  # rows of 40 bytes
        for li in range(4):
            row = 0
            for h in range(2):
                for c in np.flatnonzero(rng.random(int(rng.integers(1, 300))) < 0.7).tolist():
                    m = int(rng.integers(1, 8))
                    assert hc.make_room(m * 40, 1 << 40, layer=li)
                    tick = int(rng.integers(0, 20 + 40 * li * (trial % 2)))
                    hc.put(li, h, np.array([c]), np.array([row]), np.array([m]), np.zeros((m, 10), np.float32), tick)
                    row += m
        hc.now = 1000
        layer, ask = int(rng.integers(-1, 4)), int(rng.integers(0, 5000))
        limit = hc.bytes - int(rng.integers(1, hc.bytes // 2))
        use = hc.layer_bytes.copy()
        if layer >= 0:
            use[layer] += ask
        over = use > limit // 4
        keys, where = [], []
        for li in range(4):
            for h in range(2):
                ids = np.flatnonzero(hc.tick[li][h] >= 0)
                keys.append(hc.tick[li][h][ids] + (0 if over[li] else 1 << 40))
                where += [(li, h, c, int(hc.size[li][h][c])) for c in ids.tolist()]
        order = np.argsort(np.concatenate(keys), kind="stable")
        cum = np.cumsum([where[i][3] for i in order])
        k = min(int(np.searchsorted(cum, hc.bytes + ask - limit)) + 1, order.size)
        want = {where[i][:3] for i in order[:k]}

        before = _present(hc)
        ok = hc.make_room(ask, limit, layer=layer)
        assert before - _present(hc) == want
        held = [sum(int(hc.size[li][h][hc.tick[li][h] >= 0].sum()) for h in range(2)) for li in range(4)]
        assert hc.layer_bytes.tolist() == [b + (ask if ok and li == layer else 0) for li, b in enumerate(held)]


@pytest.mark.parametrize("capacity", [None, 64])
def test_hot_slab_gathers_what_was_put_and_reuses_freed_slots(capacity):
    """Records put in the slab come back row for row through slots(), after evictions and duplicate
    puts; every slot is held by one entry or free, never both."""
    from vrex_edge.runtime.kvstore.hot import HotCache

    rng = np.random.default_rng(3)
    hc = HotCache(2, 2, 4, capacity)
    truth: dict[tuple[int, int, int], np.ndarray] = {}
    row = [0, 0]
    for step in range(300):
        li, h = int(rng.integers(0, 2)), int(rng.integers(0, 2))
        ids = np.unique(rng.integers(0, 40, size=int(rng.integers(1, 5))))
        cnt = rng.integers(1, 4, size=ids.size)
        first = row[li] + np.cumsum(cnt) - cnt
        row[li] += int(cnt.sum())
        recs = rng.standard_normal((int(cnt.sum()), 4)).astype(np.float32)
        if not hc.make_room(int(cnt.sum()) * 16, 48 * 16, layer=li):
            continue
        was = hc.tick[li][h][ids] >= 0 if hc.tick[li][h].size > ids.max() else np.zeros(ids.size, bool)
        hc.put(li, h, ids, first, cnt, recs, hc.begin())
        for c, a, n, old in zip(ids.tolist(), (np.cumsum(cnt) - cnt).tolist(), cnt.tolist(), was.tolist(), strict=True):
            if not old:  # a duplicate keeps the entry it had
                truth[li, h, c] = recs[a : a + n]
        for key in [k for k in truth if hc.tick[k[0]][k[1]].size <= k[2] or hc.tick[k[0]][k[1]][k[2]] < 0]:
            del truth[key]  # evicted
        held = sum(int(hc.size[a][b][hc.tick[a][b] >= 0].sum()) for a in range(2) for b in range(2))
        assert held == hc.bytes
        for (a, b, c), want in truth.items():
            got = hc.slab[hc.slots(a, b, np.array([c]))]
            np.testing.assert_array_equal(got, want)
        if step % 50 == 49:  # every slot handed out is either held or free, once
            used = np.concatenate(
                [hc.slots(a, b, np.flatnonzero(hc.tick[a][b] >= 0)) for a in range(2) for b in range(2)]
            )
            assert np.unique(np.r_[used, hc.free[: hc.nfree]]).size == used.size + hc.nfree
    assert len(truth) > 0 and hc.evicted > 0
    if capacity is not None:
        assert hc.slab.shape[0] == capacity  # reserved once: make_room keeps what is held within it


def test_gap_buffer_counts_in_the_budget(tmp_path: Path):
    text = make_text()
    caches, mgr = tiered_caches(text, 2, TierConfig(budget=800_000, root=tmp_path, prefetch=False))
    assert mgr.junk.nbytes > 0
    assert mgr.fixed_total() == int(mgr.fixed.sum()) + mgr.fixed_ws + mgr.scratch.nbytes + mgr.junk.nbytes
    r = mgr.resident()
    assert r["workspace"] >= mgr.scratch.nbytes + mgr.junk.nbytes
    mgr.close()


# ---------------------------------------------------------------- whole model (tiny videollm)

FRAMES = 24
MODEL_BUDGET = 700_000  # of ~1.2 MB resident without a budget: the cold tier is used


def frames(model, n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    tv = 10
    base = rng.standard_normal((4, tv, model.text.hidden_size)).astype(np.float32)
    for i in range(n):  # scenes of 6 frames, small noise: clusters form
        yield (base[(i // 6) % 4] + 0.1 * rng.standard_normal(base.shape[1:])).astype(np.float32)


def run_stream(model, kv, embeds, *, start=0, session=None, ask_at=(), logits=True, **opts):
    from vrex_edge.runtime.events import Answer, FrameProcessed
    from vrex_edge.runtime.session import StreamSession

    s = session or StreamSession(model, policy="resv", policy_options=dict(OPTS, recent=20, **opts), kv=kv)
    out = []
    for i, e in enumerate(embeds, start=start):
        for ev in s.push_frame_embeds(e, t=i / 2):
            if isinstance(ev, FrameProcessed):
                out.append(("p", ev.p_interval))
        if i in ask_at:
            out += [("a", ev.text) for ev in s.ask("what happened ?", t=i / 2) if isinstance(ev, Answer)]
    if logits:  # (feeds pending tokens: not before a break, or the layout differs from an unbroken run)
        out.append(("logits", s.next_logits().copy()))
    return s, out


def same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x[0] == y[0]
        assert np.array_equal(np.asarray(x[1]), np.asarray(y[1])) if x[0] != "a" else x[1] == y[1]


@pytest.fixture(scope="module")
def model(tiny_videollm_bundle):
    from vrex_edge.runtime.engine import load_model

    return load_model(tiny_videollm_bundle, threads=1)


def test_session_tiers_and_prefetch_change_nothing(model, tmp_path: Path):
    ev = list(frames(model, FRAMES))
    _, ref = run_stream(model, None, ev, ask_at=(12,))
    for prefetch in (False, True):
        kv = TierConfig(budget=MODEL_BUDGET, root=tmp_path, prefetch=prefetch)
        s, got = run_stream(model, kv, ev, ask_at=(12,))
        same(ref, got)
        rep = s.stats().retrieval["tiers"]
        assert rep["peak"] <= MODEL_BUDGET and rep["fetched"] + rep.get("prefetch", {}).get("fetched", 0) > 0
        if prefetch:
            assert rep["prefetch"]["jobs"] > 0 and rep["prefetch"]["recall"] is not None
        s.close()
    assert not hasattr(model, "lookahead")  # the prefetcher is passed to each forward, never installed
    assert not any(tmp_path.iterdir())


def test_prefetch_of_a_reused_decode_selection_changes_nothing(model, tmp_path: Path):
    """decode_reselect: a reply's decode calls reuse a selection; the prefetcher fetches that selection
    (no prediction) and the answers and outputs stay those of the all-resident run."""
    ev = list(frames(model, FRAMES))
    _, ref = run_stream(model, None, ev, ask_at=(12, 20), decode_reselect=3)
    kv = TierConfig(budget=MODEL_BUDGET, root=tmp_path, prefetch=True)
    s, got = run_stream(model, kv, ev, ask_at=(12, 20), decode_reselect=3)
    same(ref, got)
    rep = s.stats().retrieval["tiers"]
    assert rep["prefetch"]["jobs"] > 0 and rep["prefetch"]["errors"] == 0
    s.close()


def test_a_failing_prefetch_is_reported_and_changes_nothing(model, tmp_path: Path, monkeypatch):
    from vrex_edge.runtime.kvstore.prefetch import Prefetcher

    ev = list(frames(model, FRAMES))
    _, ref = run_stream(model, None, ev, ask_at=(12,))

    def broken(self, layer, hidden, positions, phase):
        raise RuntimeError("prediction failed")

    monkeypatch.setattr(Prefetcher, "_predict_fetch", broken)
    s, got = run_stream(model, TierConfig(budget=MODEL_BUDGET, root=tmp_path, prefetch=True), ev, ask_at=(12,))
    same(ref, got)  # the exact path read on demand what the prefetch did not
    pf = s.stats().retrieval["tiers"]["prefetch"]
    assert pf["failure"] == "RuntimeError: prediction failed" and pf["errors"] == 1  # stopped after the first
    s.close()


def test_one_backend_per_session_opened_and_closed(model, monkeypatch):
    from vrex_edge.accel import backend
    from vrex_edge.accel.host import HostBackend

    made: list = []

    class Counting(HostBackend):
        closed = 0

        def close(self) -> None:
            self.closed += 1

    monkeypatch.setitem(backend._BACKENDS, "counting", lambda: made.append(Counting()) or made[-1])
    s, _ = run_stream(model, None, list(frames(model, 8)), accel="counting")
    s.close()
    assert len(made) == 1 and made[0].closed == 1  # not one per layer, and closed with the session


def test_session_per_layer_buffers_with_prefetch(model, tmp_path: Path):
    """incremental=1: per-layer attention buffers keep the last selection; the same answers."""
    ev = list(frames(model, FRAMES))
    _, ref = run_stream(model, None, ev, ask_at=(12,), incremental=1)
    budget = 1_000_000  # room for the buffers of every layer, not for everything
    s, got = run_stream(model, TierConfig(budget=budget, root=tmp_path, prefetch=True), ev, ask_at=(12,), incremental=1)
    assert [x[0] for x in ref] == [x[0] for x in got]
    for x, y in zip(ref, got, strict=True):
        if x[0] == "a":
            assert x[1] == y[1]
        else:
            np.testing.assert_allclose(np.asarray(x[1], np.float64), np.asarray(y[1], np.float64), rtol=1e-4, atol=1e-5)
    rep = s.stats().retrieval["tiers"]
    assert rep["peak"] <= budget and rep["prefetch"]["jobs"] > 0, rep
    assert rep["own_buffers"] == len(s.caches) and rep["fetched"] + rep["prefetch"]["fetched"] > 0, rep
    s.close()


@pytest.mark.parametrize("opts", [dict(), dict(fine=16, block=4)])
def test_keep_and_resume_equal_no_break(model, tmp_path: Path, opts):
    ev = list(frames(model, FRAMES))
    _, ref = run_stream(model, None, ev, ask_at=(8, 20), **opts)
    keep = tmp_path / "kept"
    s1, part1 = run_stream(
        model, TierConfig(budget=MODEL_BUDGET, keep=keep), ev[:14], ask_at=(8,), logits=False, **opts
    )
    s1.close(stream_time=9.0)
    assert (keep / "state.json").is_file() and any(keep.glob("L000.*.kv"))
    if opts:  # retired representatives are part of the kept store
        assert any(keep.glob("L000.h0.reps")) and s1.tiers.report()["retired"]["blocks"] > 0
    s2, part2 = run_stream(model, TierConfig(budget=MODEL_BUDGET, resume=keep), ev[14:], start=14, ask_at=(20,), **opts)
    assert s2.resumed_time == 9.0
    s2.close()
    same(ref, part1 + part2)
    assert (keep / "state.json").is_file()  # a resumed store stays kept


def test_resume_goes_on_with_the_first_runs_budget(model, tmp_path: Path):
    """At exactly the fixed bound, a stream that attends nearly all of a growing history (tau 0.99)
    used to stop at frame 72 of 120 ("budget too small"); the attended set is now capped by what
    the budget leaves, so the unbroken stream and a kept stream resumed with the first run's budget
    both run to their end within it. (A resumed stream's buffers start small, so once the cap binds
    it may select other clusters than the unbroken stream; the budget holds either way.)"""
    from vrex_edge.runtime.events import Answer, FrameProcessed
    from vrex_edge.runtime.session import StreamSession

    opts = dict(OPTS, recent=20, tau=0.99, horizon=4, max_cluster=8)

    def session(kv):
        return StreamSession(model, policy="resv", policy_options=opts, kv=kv, speak_threshold=0.0, max_reply_tokens=4)

    def push(s, embeds, start):
        n = sum(
            isinstance(e, FrameProcessed) for i, x in enumerate(embeds, start) for e in s.push_frame_embeds(x, i / 2)
        )
        return n + sum(isinstance(e, Answer) for e in s.ask("what happened ?", t=(start + len(embeds)) / 2))

    ev = list(frames(model, 120))
    probe = session(TierConfig(root=tmp_path))
    budget = probe.tiers.bound.minimum
    probe.close()
    s0 = session(TierConfig(budget=budget, root=tmp_path))
    assert push(s0, ev, 0) == 121
    st = s0.stats().retrieval
    assert st["tiers"]["peak"] <= budget and st["prefill_kept_fraction"] < 0.95  # the cap held it back
    s0.close()
    keep = tmp_path / "kept"
    s1 = session(TierConfig(budget=budget, keep=keep))
    assert push(s1, ev[:60], 0) == 61
    s1.close(stream_time=30.0)
    s2 = session(TierConfig(budget=budget, resume=keep))
    assert s2.resumed_time == 30.0 and push(s2, ev[60:], 60) == 61
    assert s2.stats().retrieval["tiers"]["peak"] <= budget
    s2.close()


def test_kept_state_is_plain_json_and_npz(model, tmp_path: Path):
    keep = tmp_path / "kept"
    s1, _ = run_stream(model, TierConfig(budget=MODEL_BUDGET, keep=keep), list(frames(model, 10)), logits=False)
    s1.close(stream_time=5.0)
    doc = json.loads((keep / "state.json").read_text())
    assert doc["format"] == "vrex-kv-state" and doc["format_version"] == FORMAT
    with np.load(keep / doc["arrays"], allow_pickle=False) as z:  # no object arrays anywhere
        assert all(z[k].dtype != object for k in z.files)
    assert not list(keep.glob("*.pkl"))


def test_a_full_disk_while_saving_keeps_the_previous_state(model, tmp_path: Path, monkeypatch):
    from vrex_edge.runtime.kvstore import resume

    keep = _kept(model, tmp_path / "kept")
    before = (keep / "state.json").read_bytes()
    s, _ = run_stream(model, TierConfig(budget=MODEL_BUDGET, resume=keep), list(frames(model, 4, seed=3)), logits=False)

    def full(f, **arrays):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(resume.np, "savez", full)
    with pytest.raises(KVStoreError, match="cannot save the KV store's state.*No space left.*unchanged"):
        s.close(stream_time=7.0)
    assert (keep / "state.json").read_bytes() == before  # the earlier state still resumes
    assert not list(keep.glob("*.tmp")) and len(list(keep.glob("state-*.npz"))) == 1


def _kept(model, folder: Path) -> Path:
    s, _ = run_stream(model, TierConfig(budget=MODEL_BUDGET, keep=folder), list(frames(model, 10)), logits=False)
    s.close(stream_time=5.0)
    return folder


def _break_json(f: Path) -> None:
    f.write_text(f.read_text()[:-40])


def _break_npz(f: Path) -> None:
    npz = f.parent / json.loads(f.read_text())["arrays"]
    npz.write_bytes(npz.read_bytes()[:200])


def _break_version(f: Path) -> None:
    d = json.loads(f.read_text())
    d["format_version"] = 99
    f.write_text(json.dumps(d))


def _break_array(f: Path) -> None:  # an array of the wrong dtype (same name, another content)
    d = json.loads(f.read_text())
    npz = f.parent / d["arrays"]
    with np.load(npz, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    ref = d["layers"][0]["cache"]["@d"]["history"]["@d"]["store"]["@d"]["counts"]["@a"]
    arrays[ref] = arrays[ref].astype(np.float32)
    np.savez(npz, **arrays)


def _break_segment(f: Path) -> None:
    seg = sorted(f.parent.glob("L000.*.kv"))[0]
    seg.write_bytes(seg.read_bytes()[:100])


@pytest.mark.parametrize(
    "breaker,match",
    [
        (_break_json, "malformed"),
        (_break_npz, "malformed"),
        (_break_version, "another vrex-edge version"),
        (_break_array, "malformed"),
        (_break_segment, "truncated"),
    ],
)
def test_corrupted_store_is_a_clear_error(model, tmp_path: Path, breaker, match):
    keep = _kept(model, tmp_path / "kept")
    breaker(keep / "state.json")
    with pytest.raises(KVStoreError, match=match):
        run_stream(model, TierConfig(budget=MODEL_BUDGET, resume=keep), [])


def test_mismatched_store_is_a_clear_error(model, tmp_path: Path):
    from vrex_edge.runtime.session import StreamSession

    keep = _kept(model, tmp_path / "kept")
    with pytest.raises(KVStoreError, match="different options"):
        StreamSession(
            model, policy="resv", policy_options=dict(OPTS, recent=24), kv=TierConfig(budget=MODEL_BUDGET, resume=keep)
        )


def test_resume_errors(model, tmp_path: Path):
    with pytest.raises(KVStoreError, match="nothing to resume"):
        run_stream(model, TierConfig(resume=tmp_path / "none"), [])
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(VrexError, match="not empty"):
        run_stream(model, TierConfig(keep=tmp_path / "full"), [])
    with pytest.raises(VrexError, match="policy resv"):
        from vrex_edge.runtime.session import StreamSession

        StreamSession(model, policy="full", kv=TierConfig(budget=1 << 20, root=tmp_path))


# ---------------------------------------------------------------- CLI: caption with tiers


def test_cli_caption_tiers_keep_resume_and_faults(tiny_videollm_bundle, tmp_path: Path, monkeypatch):
    import cv2

    from tests.test_cli import assert_one_line_error, run
    from vrex_edge.runtime.kvstore import cold, config

    video = tmp_path / "clip.mp4"
    w = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 10, (96, 64))
    for i in range(30):
        frame = np.full((64, 96, 3), 60, np.uint8)
        cv2.circle(frame, (8 + 2 * i, 32), 8, (0, 0, 255), -1)
        w.write(frame)
    w.release()
    common = ["--model", tiny_videollm_bundle, "--format", "jsonl", "-q", "--opt", "dense_below=0"]
    out = tmp_path / "out.jsonl"
    r = run("caption", video, *common, "-o", out, "--kv-budget", "4M", "--ask", "1=what ?")
    assert r.exit_code == 0, r.output
    assert out.read_text().strip()
    assert not any(config.default_root().glob("session-*"))  # the temporary store is gone
    same = tmp_path / "same.jsonl"
    r = run("caption", video, *common, "-o", same, "--kv-budget", "4M", "--ask", "1=what ?", "--no-kv-prefetch")
    assert r.exit_code == 0, r.output

    def texts(p):
        return [json.loads(line).get("text") for line in p.read_text().splitlines()]

    assert texts(same) == texts(out)  # prefetching changes when clusters are read, not what is attended

    keep = tmp_path / "kept"
    r = run("caption", video, *common, "--kv-budget", "4M", "--keep-kv", keep)
    assert r.exit_code == 0, r.output
    assert (keep / "state.json").is_file()
    r = run("caption", video, *common, "--resume", keep, "--ask", "1=again ?")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout.splitlines()[-1])["t"] >= 3.0  # times go on from the kept stream

    def full(fd, data, off):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cold, "_pwrite", full)
    out.write_text("precious\n")
    r = run("caption", video, *common, "-o", out, "--kv-budget", "4M", "--opt", "recent=4")
    assert_one_line_error(r, "disk is full")
    assert out.read_text() == "precious\n"  # the output file is intact
    assert not any(config.default_root().glob("session-*"))


def _clip(path: Path, frames: int) -> Path:
    """A 64x48 clip at 10 fps (played in real time by `live`) of a box moving right."""
    import cv2

    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (64, 48))
    for i in range(frames):
        frame = np.full((48, 64, 3), 50, np.uint8)
        cv2.rectangle(frame, (i % 54, 10), (i % 54 + 10, 20), (255, 0, 0), -1)
        w.write(frame)
    w.release()
    return path


@pytest.mark.skipif(__import__("shutil").which("vrex-edge") is None, reason="console script not installed")
def test_live_ctrl_c_keeps_the_store_and_resume_goes_on(tiny_videollm_bundle, tmp_path: Path):
    """`vrex-edge live --keep-kv DIR`, Ctrl-C, then `--resume DIR`: the first Ctrl-C ends the stream
    at a frame boundary and saves the state; the resumed stream's times go on from there.

    Ctrl-C goes once the live view shows a processed frame (a non-zero cache), not after a sleep: under
    load a sleep could end before the first frame, and a stop there rightly saves stream time 0. The
    stopped stream plays a 60 s clip so that only the Ctrl-C can end it (the summary must name it)."""
    pexpect = pytest.importorskip("pexpect")
    long_clip, short_clip = _clip(tmp_path / "long.mp4", 600), _clip(tmp_path / "short.mp4", 60)
    keep, out = tmp_path / "kept", tmp_path / "session.jsonl"
    common = ["--model", str(tiny_videollm_bundle), "--opt", "dense_below=0", "--kv-budget", "4M", "-o", str(out)]

    def spawn(clip: Path, *extra: str):
        return spawn_cli(["live", "--source", str(clip), *common, *extra], timeout=120)

    child = spawn(long_clip, "--keep-kv", str(keep))
    seen = io.StringIO()
    child.logfile_read = seen  # what the terminal showed, for the failure message
    try:
        child.expect(r"cache [1-9][0-9,]* tok")  # the status line once a frame has been processed
        child.sendintr()  # Ctrl-C
        child.expect("live session summary")
        child.expect(r"ended[^\n]*(SIGINT|Ctrl-C)")  # the Ctrl-C ended it, not the clip's end
        child.expect("continue with --resume")
        child.expect(pexpect.EOF)
    except (pexpect.EOF, pexpect.TIMEOUT) as e:
        pytest.fail(f"{type(e).__name__}; the terminal showed (last 3,000 characters):\n{seen.getvalue()[-3000:]}")
    child.close()
    assert child.exitstatus == 0
    doc = json.loads((keep / "state.json").read_text())
    stopped = doc["stream_time"]
    assert stopped is not None and 0 < stopped < 60

    ask_until_done(spawn(short_clip, "--resume", str(keep)), "where is it")
    answer = answers(out, "where is it")
    assert answer and answer[0]["t"] >= stopped  # the resumed stream's clock goes on
    assert json.loads((keep / "state.json").read_text())["serial"] == doc["serial"] + 1
