"""`resv`, `topk` and `window` with their KV on the device (retrieval/device*.py) vs the host caches, same streams.

Checked on every machine with the device engine on onnxruntime's CPU provider (`device="cpu"`: the same
graphs and bindings); the `gpu`-marked cases run the same on the CUDA provider and skip where it is missing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.test_gpu import DEVICES, needs_cuda, rand
from tests.test_retrieval import make_text, stream
from vrex_edge.errors import ConfigError
from vrex_edge.runtime.kernels import Segment
from vrex_edge.runtime.kernels.ort_cuda import OrtDeviceEngine
from vrex_edge.runtime.kernels.ort_graphs import FORMS
from vrex_edge.runtime.kernels.reference import attend_reference
from vrex_edge.runtime.retrieval import make_policy
from vrex_edge.runtime.retrieval.device import DeviceTopKKV, DeviceWindowKV, RowStorage
from vrex_edge.runtime.retrieval.device_resv import DeviceReSVKV
from vrex_edge.runtime.retrieval.policy import Policy
from vrex_edge.runtime.retrieval.registry import get_spec
from vrex_edge.runtime.retrieval.resv import ReSVCache
from vrex_edge.runtime.retrieval.topk import TopKCache
from vrex_edge.runtime.retrieval.window import WindowCache
from vrex_edge.runtime.rope import Rope

DEMO = Path(__file__).resolve().parent.parent / "samples" / "world_demo"
CHUNKS = [37] + [10] * 12 + [1] * 15 + [10] * 8 + [1] * 5 + [64] + [3, 7, 1, 1, 11] * 4
VARIANTS = [
    dict(),
    dict(keys="pre", hamming=8, horizon=4, max_cluster=5, sink=4, recent=16),
    dict(keys="post", hamming=12, horizon=2, max_cluster=3, sink=0, recent=0, bits=70),
    dict(keys="pre", score_keys="post", hamming=6, horizon=8, max_cluster=8, sink=3, recent=12, cluster_batch=4),
    dict(keys="post", score_keys="pre", hamming=10, tau=0.5, reselect=3, sink=2, recent=5),
    dict(hamming=8, dense_below=120, max_kept=40, tau=0.99, sink=4, recent=8),
    dict(hamming=6, tau=1.0, sink=4, recent=8),
    dict(reps="int8", hamming=6, tau=0.8, sink=4, recent=8),  # the int8 masses' math in float32 on the device
    dict(reps="int8", hamming=10, tau=0.5, reselect=3, sink=2, recent=5),
    dict(hamming=10, tau=0.5, decode_reselect=4, sink=2, recent=5),  # decode reuses, prefill selects per call
]


def device_policy(engine: OrtDeviceEngine, name: str = "resv", **options) -> Policy:
    spec = get_spec(name)
    return Policy(spec, spec.options.parse(options), device="cuda", device_engine=engine)


def pair(text, engine: OrtDeviceEngine, name: str = "resv", **options):
    """The host cache and the device cache of policy `name` with the same options."""
    rope = Rope(text.rope)
    host = make_policy(name, **options)(0, text, rope)
    dev = device_policy(engine, name, **options)(0, text, rope)
    assert type(host) is {"resv": ReSVCache, "topk": TopKCache, "window": WindowCache}[name]
    assert isinstance(dev, {"resv": DeviceReSVKV, "topk": DeviceTopKKV, "window": DeviceWindowKV}[name])
    return host, dev


def compare(host, dev, text, chunks: list[int], seed: int = 0, start: int = 0) -> None:
    """Attend both caches to one stream; every call: the same kept counts per head, outputs within float32."""
    rng = np.random.default_rng(seed)
    pos = start
    for q, k, v, phase in stream(rng, text, chunks, noise=0.05):
        p = np.arange(pos, pos + q.shape[1])
        a = host.attend(q, k, v, p, phase=phase)
        b = dev.attend(q, k, v, p, phase=phase)
        np.testing.assert_array_equal(dev.stats().kept, host.stats().kept)
        np.testing.assert_array_equal(dev.stats().clusters, host.stats().clusters)
        np.testing.assert_allclose(b, a, atol=3e-5, rtol=1e-4)
        pos += q.shape[1]
    assert dev.length == host.length == pos


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "options", VARIANTS, ids=[",".join(f"{k}={v}" for k, v in o.items()) or "defaults" for o in VARIANTS]
)
def test_device_resv_matches_host_resv(device: str, options: dict) -> None:
    text = make_text(h=6, kvh=2, hd=32)
    host, dev = pair(text, OrtDeviceEngine(device=device, min_capacity=16), **options)
    compare(host, dev, text, CHUNKS)
    once = options.get("reselect", 1) == 1 and options.get("decode_reselect", 0) in (0, 1)
    fused = once and not options.get("max_kept") and not options.get("dense_below")
    assert dev.fused == fused  # one device run per call, or the host's selection and a gather run
    if not fused:
        np.testing.assert_allclose(dev.last_mass, host.last_mass, atol=1e-6, rtol=1e-4)
    assert dev.store.nclu.max() > 1


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("form", FORMS)
def test_device_resv_in_every_graph_form(device: str, form: str) -> None:
    """The fused run's masses (and a reselecting cache's separate masses run) read the representatives the
    way the form says; the selections and outputs are the host's in every form."""
    text = make_text(h=6, kvh=2, hd=32)
    for options in (dict(), dict(hamming=10, tau=0.5, reselect=3, sink=2, recent=5)):
        host, dev = pair(text, OrtDeviceEngine(device=device, min_capacity=16, form=form), **options)
        compare(host, dev, text, CHUNKS)


TOPK_VARIANTS = [dict(), dict(k=3, decode_block=4, sink=4, recent=16), dict(k=1.0, sink=0, recent=0), dict(k=0.5)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "options", TOPK_VARIANTS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "defaults"
)
def test_device_topk_matches_host_topk(device: str, options: dict) -> None:
    text = make_text(h=6, kvh=2, hd=32)
    host, dev = pair(text, OrtDeviceEngine(device=device, min_capacity=16), "topk", **options)
    compare(host, dev, text, CHUNKS)
    assert dev.nb == host.nb > 10


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "name, opts",
    [
        ("resv", dict(hamming=6, horizon=8, max_cluster=8, sink=4, recent=8)),  # the fused device run
        ("resv", dict(hamming=6, horizon=8, max_cluster=8, sink=4, recent=8, reselect=2)),  # host selection
        ("topk", dict(k=3, sink=4)),
    ],
)
def test_device_state_round_trip(device: str, name: str, opts: dict) -> None:
    """A stream saved half way and restored into a fresh device cache goes on exactly as the original."""
    text = make_text(h=4, kvh=2, hd=16)
    eng = OrtDeviceEngine(device=device, min_capacity=16)
    host, dev = pair(text, eng, name, **opts)
    rng = np.random.default_rng(5)
    chunks = list(stream(rng, text, [20, 10, 10, 1, 1, 10, 10, 1, 3, 10, 1, 1]))
    pos = 0
    for i, (q, k, v, phase) in enumerate(chunks):
        p = np.arange(pos, pos + q.shape[1])
        if i == 6:
            resumed = device_policy(eng, name, **opts)(0, text, Rope(text.rope))
            resumed.restore(dev.state())
            dev = resumed
        a, b = host.attend(q, k, v, p, phase=phase), dev.attend(q, k, v, p, phase=phase)
        np.testing.assert_allclose(b, a, atol=3e-5, rtol=1e-4)
        np.testing.assert_array_equal(dev.stats().kept, host.stats().kept)
        pos += q.shape[1]
    k_dev, _ = eng.download(dev.kv)
    assert k_dev.shape[1] == pos


@pytest.mark.parametrize("name, opts", [("resv", dict(hamming=6)), ("topk", dict(k=4)), ("window", dict())])
def test_device_extend_matches_attending(name: str, opts: dict) -> None:
    """extend() (benchmark warm-up) leaves the device cache as the host's: the next chunk sees the same."""
    text = make_text(h=4, kvh=2, hd=16)
    host, dev = pair(text, OrtDeviceEngine(device="cpu", min_capacity=16), name, sink=4, recent=8, **opts)
    rng = np.random.default_rng(2)
    k, v = rand(rng, 2, 300, 16), rand(rng, 2, 300, 16)
    for c in (host, dev):
        c.extend(k, v, np.arange(300), chunk=10)
    compare(host, dev, text, [10, 1, 10], seed=3, start=300)


@pytest.mark.parametrize(
    "options, says",
    [
        (dict(positions="compact"), "positions=compact"),
        (dict(fine=64), "fine > 0"),
        (dict(accel="dre-emu"), "accel=dre-emu"),
    ],
)
def test_device_policies_keep_what_the_device_path_lacks_on_the_host(options: dict, says: str) -> None:
    """On CUDA, options the device path cannot run build the host cache (the graphs stay on the
    device), so every setting works on every provider; the device classes refuse them by name."""
    from vrex_edge.runtime.retrieval.device_resv import DeviceReSVKV
    from vrex_edge.runtime.retrieval.resv import ReSVCache
    from vrex_edge.runtime.retrieval.topk import TopKCache

    text = make_text()
    cache = device_policy(OrtDeviceEngine(device="cpu"), **options)(0, text, Rope(text.rope))
    assert type(cache) is ReSVCache
    assert type(device_policy(OrtDeviceEngine(device="cpu"))(0, text, Rope(text.rope), RowStorage())) is ReSVCache
    topk = device_policy(OrtDeviceEngine(device="cpu"), "topk", positions="compact")(0, text, Rope(text.rope))
    assert type(topk) is TopKCache
    policy = device_policy(OrtDeviceEngine(device="cpu"), **options)
    with pytest.raises(ConfigError, match=says):
        DeviceReSVKV(0, text, Rope(text.rope), policy.options, policy=policy, engine=policy.device_engine)
    plain = device_policy(OrtDeviceEngine(device="cpu"))
    with pytest.raises(ConfigError, match="KV tiers"):  # any storage but the resident one is the tiers'
        DeviceReSVKV(
            0, text, Rope(text.rope), plain.options, policy=plain, engine=plain.device_engine, storage=RowStorage()
        )


def test_engine_gather_attention_matches_reference() -> None:
    """attend_rows_append: per-head rows in any order with per-head lengths (one head reading none)."""
    rng = np.random.default_rng(4)
    eng = OrtDeviceEngine(device="cpu", min_capacity=8)
    kv = eng.new_kv(3, 16)
    hk, hv = rand(rng, 3, 40, 16), rand(rng, 3, 40, 16)
    eng.upload(kv, hk, hv)
    rows = np.stack([rng.permutation(40)[:25] for _ in range(3)])  # [KVH, 25]
    lens = np.array([25, 7, 0])
    q, k, v = rand(rng, 3, 2, 5, 16), rand(rng, 3, 5, 16), rand(rng, 3, 5, 16)
    out = eng.attend_rows_append(q, kv, rows, lens, k, v)
    gk = np.zeros((3, 25, 16), np.float32)
    gv = np.zeros_like(gk)
    for h in range(3):
        gk[h, : lens[h]], gv[h, : lens[h]] = hk[h, rows[h, : lens[h]]], hv[h, rows[h, : lens[h]]]
    ref = attend_reference(q, [Segment(gk, gv, lens)], k, v)
    np.testing.assert_allclose(out, ref, atol=2e-5, rtol=1e-4)
    dk, _ = eng.download(kv)
    np.testing.assert_array_equal(dk[:, 40:], k)  # the chunk was appended in the same run


@pytest.mark.gpu
@needs_cuda
def test_cuda_policy_builds_device_resv() -> None:
    """A session on CUDA gets the device cache from the policy, with the host cache's selections and outputs."""
    text = make_text(h=6, kvh=2, hd=32)
    rope = Rope(text.rope)
    dev = make_policy("resv", device="cuda", hamming=8)(0, text, rope)
    assert isinstance(dev, DeviceReSVKV)
    compare(make_policy("resv", hamming=8)(0, text, rope), dev, text, CHUNKS)


def demo_events(model, policy: Policy, seconds: float) -> list[tuple[float, str]]:
    """Captions and answers of the demo video's first `seconds` (its questions asked in that span)."""
    import itertools
    import json

    from vrex_edge.runtime.capture import open_video
    from vrex_edge.runtime.events import Answer, Caption
    from vrex_edge.runtime.session import StreamSession

    truth = json.loads(DEMO.with_suffix(".json").read_text())
    questions = [(q["time"], q["question"]) for q in truth["questions"] if q["time"] < seconds]
    frames = itertools.islice(open_video(DEMO.with_suffix(".mp4"), fps=truth["fps"]), int(seconds * truth["fps"]))
    return [
        (e.t, e.text)
        for e in StreamSession(model, policy=policy).run(frames, questions)
        if isinstance(e, Caption | Answer)
    ]


def test_demo_captions_identical_with_host_and_device_kv() -> None:
    """The embedded model on the demo with resv: host caches and the device path (CPU provider) say the same."""
    from vrex_edge.cli import default_model
    from vrex_edge.runtime.engine import load_model

    model = load_model(default_model(), threads=1)
    spec = get_spec("resv")
    host = demo_events(model, Policy(spec, spec.options.parse({}), device="cpu"), 40.0)
    dev = demo_events(model, device_policy(OrtDeviceEngine(device="cpu")), 40.0)
    assert len(host) >= 8 and dev == host


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("policy", ["full", "resv", "topk", "window"])
def test_demo_captions_identical_cpu_and_cuda(policy: str) -> None:
    """Issue 16, item 2: the whole demo on the CPU provider and on CUDA (KV on the GPU), same captions and answers."""
    from vrex_edge.cli import default_model
    from vrex_edge.runtime.engine import load_model

    cpu, gpu = load_model(default_model()), load_model(default_model(), providers=["cuda"])
    host = demo_events(cpu, make_policy(policy), 75.0)
    dev = demo_events(gpu, make_policy(policy, device="cuda"), 75.0)
    assert dev == host


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("options", [dict(sink=4, recent=8), dict(sink=0, recent=30), dict(sink=40, recent=0)])
def test_device_window_matches_host_window_in_a_bounded_arena(device: str, options: dict) -> None:
    text = make_text(h=6, kvh=2, hd=32)
    rope = Rope(text.rope)
    host = make_policy("window", **options)(0, text, rope)
    dev = device_policy(OrtDeviceEngine(device=device, min_capacity=16), "window", **options)(0, text, rope)
    assert isinstance(dev, DeviceWindowKV)
    compare(host, dev, text, CHUNKS * 3)
    live = options["sink"] + options["recent"]
    assert dev.kv.capacity <= 4 * (live + 64)  # compacted, not grown with the stream (sum(CHUNKS) * 3 = 1047)
    resumed = device_policy(OrtDeviceEngine(device=device), "window", **options)(0, text, rope)
    resumed.restore(host.state())  # a host window's state resumes on the device
    compare(host, resumed, text, [10, 1, 7], seed=9, start=host.length)


@pytest.mark.gpu
@needs_cuda
def test_cuda_device_resv_at_40k_matches_host() -> None:
    """SmolLM2 heads, a 40K history of clustered keys (tens of thousands of clusters per head: TopK, CumSum
    and NonZero at size on CUDA): the fused device run keeps what the host keeps and gives its outputs."""
    text = make_text(h=9, kvh=3, hd=64, max_positions=65536)
    rng = np.random.default_rng(7)
    cent = rng.standard_normal((3, 2000, 64)).astype(np.float32)
    pick = rng.integers(0, 2000, size=(3, 40_000))
    k = (np.take_along_axis(cent, pick[..., None], axis=1) + 0.3 * rng.standard_normal((3, 40_000, 64))).astype(
        np.float32
    )
    v = rand(rng, 3, 40_000, 64)
    host, dev = pair(text, OrtDeviceEngine(device="cuda"), keys="pre", tau=0.9, recent=128)
    assert dev.fused
    for c in (host, dev):
        c.extend(k, v, np.arange(40_000), chunk=10)
    pos = 40_000
    for _ in range(3):
        q = (np.repeat(cent[:, rng.integers(0, 50, size=10)], 3, axis=0) * 1.5 + rand(rng, 9, 10, 64)).astype(
            np.float32
        )
        kn, vn = rand(rng, 3, 10, 64), rand(rng, 3, 10, 64)
        p = np.arange(pos, pos + 10)
        a, b = host.attend(q, kn, vn, p, phase="prefill"), dev.attend(q, kn, vn, p, phase="prefill")
        np.testing.assert_array_equal(dev.stats().kept, host.stats().kept)
        assert host.stats().kept.max() < 40_000 // 2  # a real selection, not everything
        np.testing.assert_allclose(b, a, atol=3e-5, rtol=1e-4)
        pos += 10


@pytest.mark.parametrize("c", [1, 255, 256, 257, 1000, 40_001])
def test_blocked_cumsum_is_cumsum(c: int) -> None:
    """The fused resv graph's two-level scan (ort_graphs._blocked_cumsum) against numpy, across block edges."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from vrex_edge.runtime.kernels import ort_graphs as g

    i64 = TensorProto.INT64
    inits = [
        *g._blocked_cumsum_inits(),
        *(helper.make_tensor(n, i64, [1], [v]) for n, v in [("zero_1", 0), ("one_1", 1), ("two_1", 2)]),
        helper.make_tensor("minus1_1", i64, [1], [-1]),
        helper.make_tensor("big_1", i64, [1], [2**62]),
        helper.make_tensor("one", i64, [], [1]),
    ]
    nodes = [helper.make_node("Shape", ["x"], ["xs"]), *g._blocked_cumsum("x", "y", "xs")]
    dt = TensorProto.DOUBLE
    model = g._model(
        nodes,
        "scan",
        [helper.make_tensor_value_info("x", dt, ["K", "C"])],
        [helper.make_tensor_value_info("y", dt, ["K", "C"])],
        inits,
    )
    x = np.random.default_rng(c).random((3, c))
    (y,) = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, {"x": x})
    np.testing.assert_allclose(y, np.cumsum(x, axis=1), rtol=1e-12)
