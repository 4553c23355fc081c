"""KV tiers (issue 7): budget, exact parity with all-resident ReSV, prefetch, faults, keep/resume."""

from __future__ import annotations

import errno
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from tests.terminal import answers, ask_until_done, spawn_cli
from tests.test_retrieval import make_text, stream
from vrex_edge.errors import VrexError
from vrex_edge.runtime.kvcache import make_policy
from vrex_edge.runtime.kvstore import KVStoreError, TierConfig, attach_tiers, parse_bytes
from vrex_edge.runtime.rope import Rope

# dense_below=0: select from the first cluster on; incremental=0: the resident reference gathers
# in arena order, as the tiers do, so outputs must match bit for bit.
OPTS = dict(dense_below=0, incremental=0, sink=4, recent=16, hamming=6, tau=0.6, horizon=16, max_cluster=16)


def layer_caches(text, layers: int, **opts):
    f = make_policy("resv", **{**OPTS, **opts})
    rope = Rope(text.rope)
    return [f(i, text, rope) for i in range(layers)]


def fake_session(caches):
    return SimpleNamespace(model=SimpleNamespace(lookahead=None), caches=caches, policy="resv")


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


@pytest.mark.parametrize("opts,budget", [(dict(), 800_000), (dict(positions="compact", keys="pre"), 800_000),
                                         (dict(cluster_batch=5, reselect=2), 800_000), (dict(incremental=1), 1_000_000),
                                         (dict(incremental=1), 650_000), (dict(incremental=1), 500_000),
                                         (dict(positions="compact", keys="pre"), 500_000),
                                         (dict(fine=24, block=4, tau_coarse=0.9), 800_000),
                                         (dict(fine=24, block=4, positions="compact", keys="pre"), 500_000)])
def test_tiered_equals_resident_under_a_small_budget(opts, budget, tmp_path: Path):
    text = make_text(max_positions=8192)
    ref = feed(layer_caches(text, 2, **opts), text, CHUNKS)
    caches = layer_caches(text, 2, **opts)
    mgr = attach_tiers(fake_session(caches), TierConfig(budget=budget, root=tmp_path, prefetch=False))
    got = feed(caches, text, CHUNKS, mgr=mgr, budget=budget)
    rep = mgr.report()
    for a, b in zip(ref, got, strict=True):
        if opts.get("incremental"):  # per-layer buffers: the same rows, maybe in another order
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        else:
            assert np.array_equal(a, b)
    assert rep["peak"] <= budget and rep["kv"] <= budget
    assert rep["evicted"] > 0 and rep["fetched"] > 0  # the cold tier was really used
    if budget == 500_000:  # a selection larger than the hot cache goes in runs that fit, still exact
        assert rep["runs"] > 0
    if opts.get("incremental") and budget >= 1_000_000:  # per-layer buffers while they fit
        assert rep["own_buffers"] == 2
    if opts.get("incremental") and budget <= 500_000:  # else the shared workspace (given up mid-gather too)
        assert rep["own_buffers"] < 2 and rep["demoted"] > 0
    assert rep["cold_bytes"] > 0 and rep["tables"] > 0
    if opts.get("fine"):  # old representatives retired to the cold tier and read back to select
        assert rep["retired"]["blocks"] > 0 and rep["retired"]["reads"] > 0
    folder = Path(rep["folder"])
    assert any(folder.iterdir())
    mgr.close(None)
    assert not folder.exists()  # a temporary store is removed


def test_budget_too_small_is_a_clear_error(tmp_path: Path):
    text = make_text()
    caches = layer_caches(text, 1)
    with pytest.raises(KVStoreError, match="too small"):
        attach_tiers(fake_session(layer_caches(text, 1)), TierConfig(budget=1_000, root=tmp_path))
    assert not any(tmp_path.iterdir())
    mgr = attach_tiers(fake_session(caches), TierConfig(budget=60_000, root=tmp_path, prefetch=False))
    with pytest.raises(KVStoreError, match="too small"):
        feed(caches, text, [10] * 40)
    mgr.close(None, ok=False)
    assert not any(tmp_path.iterdir())


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
    caches = layer_caches(text, 2)
    mgr = attach_tiers(fake_session(caches), TierConfig(budget=None, root=tmp_path, prefetch=False,
                                                        writer=QuotaWriter(20_000, err)))
    with pytest.raises(KVStoreError, match="disk is full" if err == errno.ENOSPC else "write failed"):
        feed(caches, text, [10] * 60)
    mgr.close(None, ok=False)
    assert not any(tmp_path.iterdir())


def test_full_disk_can_drop_the_oldest_clusters(tmp_path: Path):
    text = make_text()
    caches = layer_caches(text, 2)
    quota = QuotaWriter(60_000)
    mgr = attach_tiers(fake_session(caches), TierConfig(budget=None, root=tmp_path, prefetch=False,
                                                        on_full="drop-oldest", segment_bytes=8_000, writer=quota))

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
    mgr.close(None)


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
    assert model.lookahead is None
    assert not any(tmp_path.iterdir())


def test_session_per_layer_buffers_with_prefetch(model, tmp_path: Path):
    """incremental=1: per-layer attention buffers keep the last selection; the same answers."""
    ev = list(frames(model, FRAMES))
    _, ref = run_stream(model, None, ev, ask_at=(12,), incremental=1)
    budget = 1_000_000  # room for the buffers of every layer, not for everything
    s, got = run_stream(model, TierConfig(budget=budget, root=tmp_path, prefetch=True), ev, ask_at=(12,),
                        incremental=1)
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
    s1, part1 = run_stream(model, TierConfig(budget=MODEL_BUDGET, keep=keep), ev[:14], ask_at=(8,), logits=False,
                           **opts)
    s1.close(stream_time=9.0)
    assert (keep / "state.json").is_file() and any(keep.glob("L000.*.kv"))
    if opts:  # retired representatives are part of the kept store
        assert any(keep.glob("L000.h0.reps")) and s1.tiers.report()["retired"]["blocks"] > 0
    s2, part2 = run_stream(model, TierConfig(budget=MODEL_BUDGET, resume=keep), ev[14:], start=14, ask_at=(20,),
                           **opts)
    assert s2.tiers.resumed_time == 9.0
    s2.close()
    same(ref, part1 + part2)
    assert (keep / "state.json").is_file()  # a resumed store stays kept


def test_kept_state_is_plain_json_and_npz(model, tmp_path: Path):
    keep = tmp_path / "kept"
    s1, _ = run_stream(model, TierConfig(budget=MODEL_BUDGET, keep=keep), list(frames(model, 10)), logits=False)
    s1.close(stream_time=5.0)
    doc = json.loads((keep / "state.json").read_text())
    assert doc["format"] == "vrex-kv-state" and doc["format_version"] == 2
    with np.load(keep / doc["arrays"], allow_pickle=False) as z:  # no object arrays anywhere
        assert all(z[k].dtype != object for k in z.files)
    assert not list(keep.glob("*.pkl"))


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
    ref = d["layers"][0]["store"]["@d"]["counts"]["@a"]
    arrays[ref] = arrays[ref].astype(np.float32)
    np.savez(npz, **arrays)


def _break_segment(f: Path) -> None:
    seg = sorted(f.parent.glob("L000.*.kv"))[0]
    seg.write_bytes(seg.read_bytes()[:100])


@pytest.mark.parametrize("breaker,match", [(_break_json, "malformed"), (_break_npz, "malformed"),
                                           (_break_version, "another vrex-edge version"),
                                           (_break_array, "malformed"), (_break_segment, "truncated")])
def test_corrupted_store_is_a_clear_error(model, tmp_path: Path, breaker, match):
    keep = _kept(model, tmp_path / "kept")
    breaker(keep / "state.json")
    with pytest.raises(KVStoreError, match=match):
        run_stream(model, TierConfig(budget=MODEL_BUDGET, resume=keep), [])


def test_mismatched_store_is_a_clear_error(model, tmp_path: Path):
    from vrex_edge.runtime.session import StreamSession

    keep = _kept(model, tmp_path / "kept")
    with pytest.raises(KVStoreError, match="different options"):
        StreamSession(model, policy="resv", policy_options=dict(OPTS, recent=24),
                      kv=TierConfig(budget=MODEL_BUDGET, resume=keep))


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
    r = run("caption", video, *common, "-o", out, "--kv-budget", "2M", "--ask", "1=what ?")
    assert r.exit_code == 0, r.output
    assert out.read_text().strip()
    assert not any(config.default_root().glob("session-*"))  # the temporary store is gone

    keep = tmp_path / "kept"
    r = run("caption", video, *common, "--kv-budget", "2M", "--keep-kv", keep)
    assert r.exit_code == 0, r.output
    assert (keep / "state.json").is_file()
    r = run("caption", video, *common, "--resume", keep, "--ask", "1=again ?")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout.splitlines()[-1])["t"] >= 3.0  # times go on from the kept stream

    def full(fd, data, off):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cold, "_pwrite", full)
    out.write_text("precious\n")
    r = run("caption", video, *common, "-o", out, "--kv-budget", "2M", "--opt", "recent=4")
    assert_one_line_error(r, "disk is full")
    assert out.read_text() == "precious\n"  # the output file is intact
    assert not any(config.default_root().glob("session-*"))


@pytest.mark.skipif(__import__("shutil").which("vrex-edge") is None, reason="console script not installed")
def test_live_ctrl_c_keeps_the_store_and_resume_goes_on(tiny_videollm_bundle, tmp_path: Path):
    """`vrex-edge live --keep-kv DIR`, Ctrl-C, then `--resume DIR`: the first Ctrl-C ends the stream
    at a frame boundary and saves the state; the resumed stream's times go on from there."""
    import time

    import cv2

    pexpect = pytest.importorskip("pexpect")
    clip = tmp_path / "clip.mp4"
    w = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"mp4v"), 10, (64, 48))
    for i in range(60):  # 6 s played in real time
        frame = np.full((48, 64, 3), 50, np.uint8)
        cv2.rectangle(frame, (i, 10), (i + 10, 20), (255, 0, 0), -1)
        w.write(frame)
    w.release()
    keep, out = tmp_path / "kept", tmp_path / "session.jsonl"
    common = ["live", "--source", str(clip), "--model", str(tiny_videollm_bundle), "--opt", "dense_below=0",
              "--kv-budget", "4M", "-o", str(out)]

    def spawn(*extra: str):
        return spawn_cli([*common, *extra], timeout=60)

    child = spawn("--keep-kv", str(keep))
    child.expect("ask>")
    time.sleep(2.5)
    child.sendintr()  # Ctrl-C
    child.expect("live session summary")
    child.expect("continue with --resume")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    doc = json.loads((keep / "state.json").read_text())
    stopped = doc["stream_time"]
    assert stopped is not None and stopped > 0

    ask_until_done(spawn("--resume", str(keep)), "where is it")
    answer = answers(out, "where is it")
    assert answer and answer[0]["t"] >= stopped  # the resumed stream's clock goes on
    assert json.loads((keep / "state.json").read_text())["serial"] == doc["serial"] + 1
