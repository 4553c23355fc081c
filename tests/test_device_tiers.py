"""The KV tiers on the device (retrieval/device_tiers.py) and the offloaded full baseline (full.py), on
onnxruntime's CPU provider (the same graphs and bindings as on CUDA; the `gpu` cases run them there).

BudgetReSVKV must give the all-resident device resv's selections and outputs whatever its budget, keep
its slot maps consistent, and copy in exactly the needed rows that were not resident; OffloadedFullKV
must give FullKV's outputs while copying its host part to the device every call.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.test_device_caches import CHUNKS, device_policy
from tests.test_gpu import DEVICES, needs_cuda, rand
from tests.test_retrieval import make_text, stream
from vrex_edge.runtime.kernels.ort_cuda import OrtDeviceEngine
from vrex_edge.runtime.retrieval import FullKV
from vrex_edge.runtime.retrieval.device_resv import DeviceReSVKV
from vrex_edge.runtime.retrieval.device_tiers import BudgetReSVKV, SlotMap
from vrex_edge.runtime.retrieval.full import OffloadedFullKV
from vrex_edge.runtime.retrieval.resv import ReSVCache
from vrex_edge.runtime.rope import Rope

OPTS = dict(keys="pre", hamming=8, horizon=4, max_cluster=5, sink=4, recent=16)


def budget_pair(engine: OrtDeviceEngine, text, slots: int, **opts):
    """The all-resident device resv and a BudgetReSVKV of `slots` tokens per head, same options."""
    rope = Rope(text.rope)
    policy = device_policy(engine, **opts)
    ref = policy(0, text, rope)
    assert type(ref) is DeviceReSVKV
    row = 2 * text.num_kv_heads * text.head_dim * 4
    dev = BudgetReSVKV(0, text, rope, policy.options, policy=policy, engine=engine, budget=slots * row)
    assert dev.slot_count == slots and dev.kv.capacity == slots
    return ref, dev


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("slots", [40, 160, 4000], ids=["tiny", "evicting", "everything"])
def test_budget_resv_matches_resident_device_resv(device: str, slots: int) -> None:
    """Under any budget: the resident cache's kept counts and outputs; consistent slot maps; every call
    copies in exactly the rows it reads that were not resident (tiny: most rows pass through uncached)."""
    text = make_text(h=6, kvh=2, hd=32)
    eng = OrtDeviceEngine(device=device, min_capacity=16)
    ref, dev = budget_pair(eng, text, slots, **OPTS)
    rng = np.random.default_rng(0)
    pos, kept = 0, 0
    for q, k, v, phase in stream(rng, text, CHUNKS * 2, noise=0.05):
        p = np.arange(pos, pos + q.shape[1])
        before, rows, s, w = dev.slots.slot.copy(), dev.uploads["rows"], dev.sink_n, dev.ring.n
        a, b = ref.attend(q, k, v, p, phase=phase), dev.attend(q, k, v, p, phase=phase)
        np.testing.assert_array_equal(dev.stats().kept, ref.stats().kept)
        np.testing.assert_allclose(b, a, atol=3e-5, rtol=1e-4)
        dev.slots.check()
        assert (dev.slots.token >= 0).sum() <= dev.kvh * slots
        up = dev.uploads["rows"] - rows
        assert dev.last_upload == up * 2 * text.head_dim * 4
        misses, roomy = 0, True  # rows read that were not resident; whether the chunk displaced none
        for h in range(dev.kvh):
            need = np.concatenate([np.arange(s), dev.selected_rows()[h], np.arange(pos - w, pos)])
            out = int((before[h, need] < 0).sum())
            misses += out
            roomy &= need.size - out + min(q.shape[1], slots) <= slots
        assert up == misses if roomy else up >= misses
        kept += int(dev.stats().kept.sum())
        pos += q.shape[1]
    assert dev.length == ref.length == pos and dev.host.n == pos
    assert dev.uploads["calls"] == len(CHUNKS) * 2
    if slots == 4000:  # every row copied in once at most
        assert dev.uploads["rows"] <= dev.kvh * pos and dev.uploads["passed"] == 0
    else:
        assert pos > slots  # the stream outgrew the slots: rows were evicted
        assert dev.uploads["rows"] < kept  # and the slots still saved copies
    if slots == 40:
        assert dev.uploads["passed"] > 0  # rows read straight from host memory, not kept


def test_budget_resv_host_selection_options() -> None:
    """Options that select on the host in every device resv (reselect, max_kept, dense_below) and tau=1."""
    text = make_text(h=6, kvh=2, hd=32)
    eng = OrtDeviceEngine(device="cpu", min_capacity=16)
    for opts in (dict(hamming=10, tau=0.5, reselect=3, sink=2, recent=5), dict(hamming=8, max_kept=40, tau=0.99)):
        host = device_policy(eng, **opts)(0, text, Rope(text.rope))
        _, dev = budget_pair(eng, text, 100, **opts)
        pos = 0
        for q, k, v, phase in stream(np.random.default_rng(1), text, CHUNKS, noise=0.05):
            p = np.arange(pos, pos + q.shape[1])
            a, b = host.attend(q, k, v, p, phase=phase), dev.attend(q, k, v, p, phase=phase)
            np.testing.assert_array_equal(dev.stats().kept, host.stats().kept)
            np.testing.assert_allclose(b, a, atol=3e-5, rtol=1e-4)
            pos += q.shape[1]


def test_budget_resv_state_is_device_resvs() -> None:
    """A budgeted cache's state resumes an all-resident one and the other way round (same format)."""
    text = make_text(h=4, kvh=2, hd=16)
    eng = OrtDeviceEngine(device="cpu", min_capacity=16)
    ref, dev = budget_pair(eng, text, 50, hamming=6, horizon=8, max_cluster=8, sink=4, recent=8)
    chunks = list(stream(np.random.default_rng(5), text, [20, 10, 10, 1, 1, 10, 10, 1, 3, 10, 1, 1]))
    pos = 0
    for i, (q, k, v, phase) in enumerate(chunks):
        if i == 6:  # swap their states
            ref_s, dev_s = ref.state(), dev.state()
            ref, dev = budget_pair(eng, text, 50, hamming=6, horizon=8, max_cluster=8, sink=4, recent=8)
            ref.restore(dev_s)
            dev.restore(ref_s)
            assert (dev.slots.slot < 0).all()  # nothing resident after a restore
        p = np.arange(pos, pos + q.shape[1])
        a, b = ref.attend(q, k, v, p, phase=phase), dev.attend(q, k, v, p, phase=phase)
        np.testing.assert_allclose(b, a, atol=3e-5, rtol=1e-4)
        pos += q.shape[1]


def test_budget_resv_extend_keeps_kv_on_the_host() -> None:
    """extend() (benchmark warm-up) fills host memory only; the next calls bring in what they read."""
    text = make_text(h=4, kvh=2, hd=16)
    eng = OrtDeviceEngine(device="cpu", min_capacity=16)
    ref, dev = budget_pair(eng, text, 64, hamming=6, sink=4, recent=8)
    rng = np.random.default_rng(2)
    k, v = rand(rng, 2, 300, 16), rand(rng, 2, 300, 16)
    for c in (ref, dev):
        c.extend(k, v, np.arange(300), chunk=10)
    assert dev.host.n == 300 and (dev.slots.token < 0).all()
    pos = 300
    for q, kn, vn, phase in stream(np.random.default_rng(3), text, [10, 1, 10]):
        p = np.arange(pos, pos + q.shape[1])
        np.testing.assert_allclose(
            dev.attend(q, kn, vn, p, phase=phase), ref.attend(q, kn, vn, p, phase=phase), atol=3e-5, rtol=1e-4
        )
        pos += q.shape[1]
    assert dev.uploads["rows"] >= 2 * (4 + 8)  # at least the sink and the window came in


def test_slot_map_takes_the_least_recently_used_slots() -> None:
    sm = SlotMap(2, 5)
    sm.start(20)  # call 1
    sm.assign(np.array([0, 0, 0, 1]), np.array([0, 1, 2, 4]), np.array([7, 8, 9, 3]))
    sm.settle()
    sm.start(20)  # call 2 uses slot 1 of head 0 and slot 4 of head 1
    sm.touch(np.array([[1, -1], [4, -1]]))
    slots, got = sm.oldest(np.array([4, 5]), before=2)
    np.testing.assert_array_equal(got, [4, 4])  # head 1: every slot but the one in use
    np.testing.assert_array_equal(slots[0, :4], [3, 4, 0, 2])  # free ones first, then the oldest used
    np.testing.assert_array_equal(slots[1, :4], [0, 1, 2, 3])
    sm.assign(np.array([0]), np.array([0]), np.array([11]))  # evicts token 7
    assert sm.slot[0, 7] == -1 and sm.slot[0, 11] == 0
    sm.settle()
    sm.check()
    np.testing.assert_array_equal(sm.order[0], [3, 4, 2, 0, 1])


def test_cuda_budget_builds_from_the_tiers(tmp_path: Path) -> None:
    """--provider cuda --kv-budget: resv builds the budgeted device cache (budget split over the layers);
    with --keep-kv the history stays on the host's tiers."""
    from vrex_edge.runtime.kvstore import TierConfig, TierManager

    text = make_text(h=6, kvh=2, hd=32)
    eng = OrtDeviceEngine(device="cpu")
    for config, kind in ((TierConfig(budget=1 << 20, root=tmp_path), BudgetReSVKV), (None, ReSVCache)):
        if config is None:
            config = TierConfig(budget=1 << 20, keep=tmp_path / "kept")
        mgr = TierManager(config, layers=text.num_layers, kvh=2, hd=32)
        try:
            cache = device_policy(eng)(0, text, Rope(text.rope), mgr.storage)
            assert type(cache) is kind
            if kind is BudgetReSVKV:
                assert cache.kv.nbytes() <= (1 << 20) // text.num_layers
        finally:
            mgr.close(ok=False)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("resident", [0, 50, 100_000])
def test_offloaded_full_matches_full(device: str, resident: int) -> None:
    """Exact full attention with the tokens past `resident` in host memory, copied in by every call."""
    text = make_text(h=6, kvh=2, hd=32)
    rope = Rope(text.rope)
    ref = FullKV(text, rope)
    off = OffloadedFullKV(text, rope, engine=OrtDeviceEngine(device=device), resident=resident)
    rng = np.random.default_rng(6)
    pos = 0
    for q, k, v, phase in stream(rng, text, [37] + [10] * 8 + [1] * 5 + [64], noise=0.05):
        p = np.arange(pos, pos + q.shape[1])
        host_part = off.host.n
        a, b = ref.attend(q, k, v, p, phase=phase), off.attend(q, k, v, p, phase=phase)
        np.testing.assert_allclose(b, a, atol=3e-5, rtol=1e-4)
        assert off.last_upload == 2 * host_part * 2 * 32 * 4  # k and v of every host token, every call
        pos += q.shape[1]
    assert off.length == pos and off.kv.n <= resident and (off.host.n == 0) == (resident > pos)
    for key in ("k", "v"):
        np.testing.assert_allclose(off.state()[key], ref.state()[key], atol=1e-6)
    back = OffloadedFullKV(text, rope, engine=off.engine, resident=resident)
    back.restore(ref.state())
    q, k, v = rand(rng, 6, 3, 32), rand(rng, 2, 3, 32), rand(rng, 2, 3, 32)
    p = np.arange(pos, pos + 3)
    np.testing.assert_allclose(
        back.attend(q, k, v, p, phase="decode"), ref.attend(q, k, v, p, phase="decode"), atol=3e-5
    )


def test_demo_captions_identical_with_a_device_budget(tmp_path: Path) -> None:
    """The embedded model on the demo with resv: the host path and the device path under --kv-budget (CPU
    provider; 512 tokens per layer on the device, about half the KV at the end, so the slots evict) say the
    same. (The session's TierManager also charges the host's sink and window copies to the budget, which
    smaller budgets here do not fit.)"""
    import itertools
    import json

    from tests.test_device_caches import DEMO, demo_events
    from vrex_edge.cli import default_model
    from vrex_edge.runtime.capture import open_video
    from vrex_edge.runtime.engine import load_model
    from vrex_edge.runtime.events import Answer, Caption
    from vrex_edge.runtime.kvstore import TierConfig
    from vrex_edge.runtime.retrieval.policy import Policy
    from vrex_edge.runtime.retrieval.registry import get_spec
    from vrex_edge.runtime.session import StreamSession

    model = load_model(default_model(), threads=1)
    spec = get_spec("resv")
    small = {"recent": 64, "open_rows": 64, "cluster_batch": 1}  # a fixed bound that fits 512 tokens per layer
    host = demo_events(model, Policy(spec, spec.options.parse(small), device="cpu"), 40.0)
    truth = json.loads(DEMO.with_suffix(".json").read_text())
    questions = [(q["time"], q["question"]) for q in truth["questions"] if q["time"] < 40.0]
    frames = itertools.islice(open_video(DEMO.with_suffix(".mp4"), fps=truth["fps"]), int(40.0 * truth["fps"]))
    text = model.text
    budget = 512 * 2 * text.num_kv_heads * text.head_dim * 4 * text.num_layers  # 512 tokens per layer
    session = StreamSession(
        model,
        policy=device_policy(OrtDeviceEngine(device="cpu"), **small),
        kv=TierConfig(budget=budget, root=tmp_path),
    )
    dev = [(e.t, e.text) for e in session.run(frames, questions) if isinstance(e, Caption | Answer)]
    caches = session.caches
    session.close()
    assert all(type(c) is BudgetReSVKV and c.slot_count == 512 for c in caches)
    c = caches[0]
    assert c.length > 512 and (c.slots.token >= 0).all() and c.uploads["rows"] > c.kvh * 512  # the slots evicted
    assert len(host) >= 8 and dev == host


@pytest.mark.gpu
@needs_cuda
def test_cuda_budget_resv_at_40k_matches_host() -> None:
    """SmolLM2 heads, a 40K history of clustered keys and a device budget of 1/4 of its KV on CUDA: the
    host resv's kept counts and outputs, and fewer rows copied in than read once the slots are warm."""
    text = make_text(h=9, kvh=3, hd=64, max_positions=65536)
    rng = np.random.default_rng(7)
    cent = rng.standard_normal((3, 2000, 64)).astype(np.float32)
    pick = rng.integers(0, 2000, size=(3, 40_000))
    k = (np.take_along_axis(cent, pick[..., None], axis=1) + 0.3 * rng.standard_normal((3, 40_000, 64))).astype(
        np.float32
    )
    v = rand(rng, 3, 40_000, 64)
    rope = Rope(text.rope)
    host = device_policy(OrtDeviceEngine(device="cpu"), keys="pre")(0, text, rope)
    _, dev = budget_pair(OrtDeviceEngine(device="cuda"), text, 10_000, keys="pre")
    for c in (host, dev):
        c.extend(k, v, np.arange(40_000), chunk=10)
    pos, read, copied = 40_000, 0, 0
    for i in range(6):
        q = (np.repeat(cent[:, rng.integers(0, 50, size=10)], 3, axis=0) * 1.5 + rand(rng, 9, 10, 64)).astype(
            np.float32
        )
        kn, vn = rand(rng, 3, 10, 64), rand(rng, 3, 10, 64)
        p = np.arange(pos, pos + 10)
        rows = dev.uploads["rows"]
        a, b = host.attend(q, kn, vn, p, phase="prefill"), dev.attend(q, kn, vn, p, phase="prefill")
        np.testing.assert_array_equal(dev.stats().kept, host.stats().kept)
        np.testing.assert_allclose(b, a, atol=3e-5, rtol=1e-4)
        if i >= 3:
            read, copied = read + int(dev.stats().kept.sum()), copied + dev.uploads["rows"] - rows
        pos += 10
    dev.slots.check()
    assert copied < read
