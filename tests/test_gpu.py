"""The device attention engine (ort-cuda) and the device-resident `full` cache against the numpy reference.

The logic (token-major arena, in-place append in the attention run, growth, state) is checked on every
machine with `device="cpu"`; the tests marked `gpu` run the same on onnxruntime's CUDA provider and skip
with a message where it is missing (CI has no GPU; their output on a GPU host: benchmarks/results/).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from tests.test_retrieval import make_text, run
from vrex_edge.errors import ConfigError
from vrex_edge.runtime import kernels
from vrex_edge.runtime.kernels import Segment
from vrex_edge.runtime.kernels.ort_cuda import ENGINE_FORMS, FLAT_FROM, OrtDeviceEngine
from vrex_edge.runtime.kernels.reference import attend_reference
from vrex_edge.runtime.retrieval import FullKV, make_policy
from vrex_edge.runtime.retrieval.full import DeviceFullKV
from vrex_edge.runtime.rope import Rope

ROOT = Path(__file__).resolve().parent.parent
HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()
needs_cuda = pytest.mark.skipif(
    not HAS_CUDA,
    reason=f"onnxruntime {ort.__version__} has no CUDAExecutionProvider "
    "(install onnxruntime-gpu on a machine with an NVIDIA GPU)",
)
DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, needs_cuda])]
CHUNKS = [10, 1, 7, 10, 3, 40, 1, 1, 10]


def rand(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("form", ENGINE_FORMS)
@pytest.mark.parametrize("device", DEVICES)
def test_attend_append_matches_reference(device: str, form: str) -> None:
    """SmolLM2 head layout (9 query heads over 3 KV heads, hd 64); the arena grows twice; every graph form."""
    rng = np.random.default_rng(0)
    eng = OrtDeviceEngine(device=device, min_capacity=16, form=form)
    kv = eng.new_kv(3, 64)
    hist_k = hist_v = np.zeros((3, 0, 64), np.float32)  # [KVH, L, hd]
    for n in CHUNKS:
        q, k, v = rand(rng, 3, 3, n, 64), rand(rng, 3, n, 64), rand(rng, 3, n, 64)
        ref = attend_reference(q, [Segment(hist_k, hist_v)], k, v)
        out = eng.attend_append(q, kv, k, v)
        np.testing.assert_allclose(out, ref, atol=2e-5, rtol=1e-4)
        hist_k, hist_v = np.concatenate([hist_k, k], 1), np.concatenate([hist_v, v], 1)
        assert kv.n == hist_k.shape[1]
    assert kv.capacity >= 64
    dk, dv = eng.download(kv)
    np.testing.assert_array_equal(dk, hist_k)
    np.testing.assert_array_equal(dv, hist_v)


@pytest.mark.parametrize("device", DEVICES)
def test_attend_protocol_with_device_and_host_segments(device: str) -> None:
    rng = np.random.default_rng(1)
    eng = OrtDeviceEngine(device=device)
    kv = eng.new_kv(2, 16)
    dk, dv = rand(rng, 2, 50, 16), rand(rng, 2, 50, 16)
    eng.upload(kv, dk, dv)
    hk, hv = rand(rng, 2, 30, 16), rand(rng, 2, 30, 16)  # a host segment, heads reading 30 and 12
    q, k, v = rand(rng, 2, 2, 5, 16), rand(rng, 2, 5, 16), rand(rng, 2, 5, 16)
    host = Segment(hk, hv, np.array([30, 12]))
    out = eng.attend(q, [Segment(kv, kv, np.array([40, 40])), host], k, v)
    ref = attend_reference(q, [Segment(dk, dv, np.array([40, 40])), host], k, v)
    np.testing.assert_allclose(out, ref, atol=2e-5, rtol=1e-4)
    assert kv.n == 50  # attend() does not append
    with pytest.raises(ValueError, match="one length for every head"):
        eng.attend(q, [Segment(kv, kv, np.array([40, 20]))], k, v)


@pytest.mark.parametrize("device", DEVICES)
def test_device_full_kv_matches_full_kv_and_resumes(device: str) -> None:
    text = make_text(h=6, kvh=2, hd=32)
    chunks = [37] + [10] * 12 + [1] * 8 + [64]
    eng = OrtDeviceEngine(device=device, min_capacity=64)
    ref_cache, dev_cache = FullKV(text, Rope(text.rope)), DeviceFullKV(text, Rope(text.rope), engine=eng)
    ref, out = run(ref_cache, text, chunks), run(dev_cache, text, chunks)
    for a, b in zip(out, ref, strict=True):
        np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-4)
    assert dev_cache.length == ref_cache.length == sum(chunks)
    assert (dev_cache.stats().kept == ref_cache.stats().kept).all()
    state = dev_cache.state()
    np.testing.assert_array_equal(state["k"], ref_cache.state()["k"])
    resumed = DeviceFullKV(text, Rope(text.rope), engine=eng)
    resumed.restore(ref_cache.state())  # a host FullKV's state resumes on the device and back
    np.testing.assert_array_equal(resumed.state()["v"], ref_cache.state()["v"])


@pytest.mark.skipif(HAS_CUDA, reason="this onnxruntime has the CUDA provider")
@pytest.mark.parametrize("device", DEVICES)
def test_auto_form_switches_to_flat_at_long_histories(device: str) -> None:
    """form "auto": the first graph below FLAT_FROM tokens, the flat one from there; the same attention."""
    rng = np.random.default_rng(5)
    eng = OrtDeviceEngine(device=device, form="auto")
    kv = eng.new_kv(3, 64)
    hist_k, hist_v = rand(rng, 3, FLAT_FROM - 15, 64), rand(rng, 3, FLAT_FROM - 15, 64)
    eng.upload(kv, hist_k, hist_v)
    for _ in range(3):
        q, k, v = rand(rng, 3, 3, 10, 64), rand(rng, 3, 10, 64), rand(rng, 3, 10, 64)
        ref = attend_reference(q, [Segment(hist_k, hist_v)], k, v)
        np.testing.assert_allclose(eng.attend_append(q, kv, k, v), ref, atol=2e-5, rtol=1e-4)
        hist_k, hist_v = np.concatenate([hist_k, k], 1), np.concatenate([hist_v, v], 1)
    assert {key[2] for key in eng._sessions if key[0] == "attend_append"} == {"transposed", "flat"}


def test_device_engine_form_is_checked() -> None:
    with pytest.raises(ConfigError, match="form must be one of"):
        OrtDeviceEngine(device="cpu", form="diagonal")


def test_ort_cuda_without_cuda_says_what_to_install() -> None:
    with pytest.raises(ConfigError, match="onnxruntime-gpu"):
        kernels.make_engine("ort-cuda")


def test_cpu_policy_builds_host_caches() -> None:
    text = make_text()
    assert type(make_policy("full")(0, text, Rope(text.rope))) is FullKV


@pytest.mark.gpu
@needs_cuda
def test_cuda_policy_builds_device_full_kv_at_40k() -> None:
    """A 40K-token history on the GPU (SmolLM2 heads): parity with the reference for a 10-token chunk."""
    rng = np.random.default_rng(2)
    text = make_text(h=9, kvh=3, hd=64, max_positions=65536)
    cache = make_policy("full", device="cuda")(0, text, Rope(text.rope))
    assert isinstance(cache, DeviceFullKV)
    hk, hv = rand(rng, 3, 40_000, 64), rand(rng, 3, 40_000, 64)
    cache.restore({"k": hk, "v": hv})
    q, k, v = rand(rng, 3, 3, 10, 64), rand(rng, 3, 10, 64), rand(rng, 3, 10, 64)
    out = cache.engine.attend_append(q, cache.kv, k, v)
    np.testing.assert_allclose(out, attend_reference(q, [Segment(hk, hv)], k, v), atol=2e-5, rtol=1e-4)


@pytest.mark.gpu
@needs_cuda
def test_cuda_session_device_kv_matches_host_kv() -> None:
    """The embedded model's decoder on CUDA over random chunks: the device-resident full cache gives what
    the host cache gives with the same graphs, to float32 summation order; vs the CPU graphs to CUDA rounding.
    Measured on an H200 (benchmarks/results/gpu.md): the CUDA graphs are deterministic run to run, and the
    device vs host KV hidden states differ by up to 3.8e-3 (|h| up to 23) from the first chunk with history;
    the engine alone is within 3e-7 of the reference, so the layers amplify the order change (not yet
    explained: issue 16)."""
    from vrex_edge.runtime.engine import load_model

    bundle = ROOT / "models" / "vrex-tiny"
    cpu, gpu = load_model(bundle), load_model(bundle, providers=["cuda"])
    caches = {
        "cpu": cpu.make_caches(make_policy("full")),
        "cuda-host": gpu.make_caches(make_policy("full")),
        "cuda-device": gpu.make_caches(make_policy("full", device="cuda")),
    }
    assert isinstance(caches["cuda-device"][0], DeviceFullKV) and isinstance(caches["cuda-host"][0], FullKV)
    rng = np.random.default_rng(3)
    pos = 0
    for n in [64, 10, 10, 1, 1, 10]:
        x = rand(rng, n, cpu.text.hidden_size) * 0.1
        p = np.arange(pos, pos + n)
        a = cpu.forward(x, p, caches["cpu"], "prefill")
        b = gpu.forward(x, p, caches["cuda-host"], "prefill")
        c = gpu.forward(x, p, caches["cuda-device"], "prefill")
        np.testing.assert_allclose(c, b, atol=1e-2, rtol=1e-3)
        np.testing.assert_allclose(c, a, atol=5e-2, rtol=5e-2)
        pos += n
