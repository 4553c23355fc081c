"""The attention kernels against their float64 numpy reference, and the old host attention.

Tolerance: 2e-5 absolute on outputs of order 1 (float32 accumulation over up to a few thousand
tokens, in a different order than the reference; the observed error is ~5e-7)."""

from __future__ import annotations

import numpy as np
import pytest

from vrex_edge.errors import ConfigError
from vrex_edge.runtime import kernels
from vrex_edge.runtime.attention import attend as attend_old
from vrex_edge.runtime.kernels import Segment
from vrex_edge.runtime.kernels.numpy_engine import NumpyEngine
from vrex_edge.runtime.kernels.ort_engine import OrtEngine
from vrex_edge.runtime.kernels.reference import attend_reference

ATOL = 2e-5
ENGINES = ["numpy", "ort-cpu", "ort-cpu-lanes"]


def _rand(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def _chunk(rng, kvh=3, g=3, n=10, hd=64):
    return _rand(rng, kvh, g, n, hd), _rand(rng, kvh, n, hd), _rand(rng, kvh, n, hd)  # q, k_new, v_new


@pytest.fixture(params=ENGINES)
def engine(request):
    if request.param == "ort-cpu":
        return OrtEngine(numpy_below=1)  # every non-empty head run through the graph
    if request.param == "ort-cpu-lanes":  # runs on 3 threads, every head of 16 rows or more cut in 3
        return OrtEngine(numpy_below=1, lanes=3, split_from=16, parallel_from=1)
    return kernels.make_engine(request.param)


@pytest.mark.parametrize("L", [0, 1, 37, 700])
@pytest.mark.parametrize("n", [1, 10])
def test_equal_lengths_match_reference(engine, L, n):
    rng = np.random.default_rng(L + n)
    q, kn, vn = _chunk(rng, n=n)
    buf_k, buf_v = _rand(rng, 3, L + 9, 64), _rand(rng, 3, L + 9, 64)  # spare capacity, as GrowingArray has
    segs = [Segment(buf_k[:, :L], buf_v[:, :L])]
    ref = attend_reference(q, segs, kn, vn)
    np.testing.assert_allclose(engine.attend(q, segs, kn, vn), ref, atol=ATOL, rtol=0)
    np.testing.assert_allclose(attend_old(q, buf_k[:, :L], buf_v[:, :L], kn, vn), ref, atol=ATOL, rtol=0)


@pytest.mark.parametrize("lens", [[500, 3, 0], [0, 0, 0], [64, 64, 65], [10, 900, 2]])
def test_per_head_lengths_match_reference(engine, lens):
    rng = np.random.default_rng(sum(lens))
    q, kn, vn = _chunk(rng)
    buf_k, buf_v = _rand(rng, 3, 1000, 64), _rand(rng, 3, 1000, 64)
    segs = [Segment(buf_k, buf_v, np.array(lens))]
    np.testing.assert_allclose(engine.attend(q, segs, kn, vn), attend_reference(q, segs, kn, vn), atol=ATOL, rtol=0)


def test_multiple_segments_equal_one_concatenated(engine):
    """sink + selected history (per-head lengths) + recent window == those tokens in one buffer."""
    rng = np.random.default_rng(7)
    q, kn, vn = _chunk(rng, n=4)
    sink = (_rand(rng, 3, 4, 64), _rand(rng, 3, 4, 64))
    hist = (_rand(rng, 3, 300, 64), _rand(rng, 3, 300, 64))
    recent = (_rand(rng, 3, 32, 64), _rand(rng, 3, 32, 64))
    lens = np.array([300, 120, 7])
    segs = [Segment(*sink), Segment(*hist, lens), Segment(*recent)]
    got = engine.attend(q, segs, kn, vn)
    ref = attend_reference(q, segs, kn, vn)
    np.testing.assert_allclose(got, ref, atol=ATOL, rtol=0)
    for h in range(3):  # the same head alone over its concatenated tokens
        k = np.concatenate([sink[0][h], hist[0][h, : lens[h]], recent[0][h]])[None]  # [1, L_h, hd]
        v = np.concatenate([sink[1][h], hist[1][h, : lens[h]], recent[1][h]])[None]
        one = attend_old(q[h : h + 1], k, v, kn[h : h + 1], vn[h : h + 1])  # [1, G, n, hd]
        np.testing.assert_allclose(got[h : h + 1], one, atol=ATOL, rtol=0)


def test_numpy_blocks_and_engines_agree():
    """Block boundaries inside and across segments; the ORT engine gives the numpy engine's result."""
    rng = np.random.default_rng(3)
    q, kn, vn = _chunk(rng, kvh=2, g=4, n=3, hd=32)
    buf_k, buf_v = _rand(rng, 2, 2500, 32), _rand(rng, 2, 2500, 32)
    segs = [Segment(buf_k, buf_v, np.array([2500, 1000])), Segment(buf_k[:, :5], buf_v[:, :5])]
    ref = attend_reference(q, segs, kn, vn)
    small = NumpyEngine(block=256).attend(q, segs, kn, vn)
    np.testing.assert_allclose(small, ref, atol=ATOL, rtol=0)
    ort = kernels.make_engine("ort-cpu").attend(q, segs, kn, vn)  # head 0 by the graph, the rest by numpy
    np.testing.assert_allclose(ort, small, atol=ATOL, rtol=0)
    np.testing.assert_allclose(OrtEngine(numpy_below=1).attend(q, segs, kn, vn), small, atol=ATOL, rtol=0)


def test_fp16_storage_is_converted_per_block():
    rng = np.random.default_rng(5)
    q, kn, vn = _chunk(rng)
    k, v = _rand(rng, 3, 600, 64), _rand(rng, 3, 600, 64)
    k16, v16 = k.astype(np.float16), v.astype(np.float16)
    got = NumpyEngine(block=128).attend(q, [Segment(k16, v16)], kn, vn)
    ref = attend_reference(q, [Segment(k16.astype(np.float32), v16.astype(np.float32))], kn, vn)
    np.testing.assert_allclose(got, ref, atol=ATOL, rtol=0)


def test_interface():
    rng = np.random.default_rng(0)
    q, kn, vn = _chunk(rng, n=2)
    o = kernels.attend(q, [], kn, vn)  # the default engine, history-free
    np.testing.assert_allclose(o, attend_reference(q, [], kn, vn), atol=ATOL, rtol=0)
    assert kernels.default_engine() is kernels.default_engine()  # built once (per thread)
    assert kernels.merge_heads(o).shape == (2, 9 * 64)
    np.testing.assert_array_equal(kernels.merge_heads(o)[1, 64:128], o[0, 1, 1])  # query head 1, token 1
    assert set(ENGINES) - {"ort-cpu-lanes"} <= set(kernels.engine_names())
    with pytest.raises(ConfigError, match="unknown attention engine"):
        kernels.make_engine("nope")
    with pytest.raises(ConfigError, match="threads"):
        kernels.make_engine("ort-cpu", threads=0)


def test_copied_caches_share_the_engine():
    import copy

    for name in ("numpy", "ort-cpu"):
        eng = kernels.make_engine(name)
        assert copy.deepcopy([eng])[0] is eng


def test_ort_engine_reads_ortvalue_buffers_in_place():
    """The buffers may be OrtValues (the form a device engine keeps its KV in); bound by address, not copied."""
    import onnxruntime as ort

    rng = np.random.default_rng(11)
    q, kn, vn = _chunk(rng, n=3)
    k, v = _rand(rng, 3, 80, 64), _rand(rng, 3, 80, 64)
    lens = np.array([80, 41, 0])
    ref = attend_reference(q, [Segment(k, v, lens)], kn, vn)
    ko, vo = ort.OrtValue.ortvalue_from_numpy(k), ort.OrtValue.ortvalue_from_numpy(v)
    eng = OrtEngine(numpy_below=1)
    np.testing.assert_allclose(eng.attend(q, [Segment(ko, vo, lens)], kn, vn), ref, atol=ATOL, rtol=0)
    k[1] = 0.0  # the OrtValue shares the array's memory: the engine sees the change
    changed = attend_reference(q, [Segment(k, v, lens)], kn, vn)
    np.testing.assert_allclose(eng.attend(q, [Segment(ko, vo, lens)], kn, vn), changed, atol=ATOL, rtol=0)


def test_lanes_default_to_the_cores_and_can_be_pinned(monkeypatch):
    from vrex_edge.runtime.lanes import LANES_ENV, default_lanes

    monkeypatch.delenv(LANES_ENV, raising=False)
    assert 1 <= default_lanes() <= 4
    monkeypatch.setenv(LANES_ENV, "3")
    assert default_lanes() == 3 and kernels.make_engine("ort-cpu").lanes.n == 3
    monkeypatch.setenv(LANES_ENV, "0")
    with pytest.raises(ConfigError, match=LANES_ENV):
        default_lanes()


def test_lanes_split_a_long_history_and_merge_it_exactly():
    """A 5,000-row history on 2 lanes (two pieces per head, the heads' pieces interleaved over the
    lanes) equals one lane's result to float rounding, whatever lane finishes first."""
    rng = np.random.default_rng(5)
    q, kn, vn = _chunk(rng)
    buf_k, buf_v = _rand(rng, 3, 5000, 64), _rand(rng, 3, 5000, 64)
    segs = [Segment(buf_k, buf_v, np.array([5000, 4097, 1200]))]
    one = OrtEngine(lanes=1).attend(q, segs, kn, vn)
    two = OrtEngine(lanes=2)
    runs = two._plan(np.zeros((3, 30, 64), np.float32), segs, *(np.zeros((3, 30, w), np.float32) for w in (1, 1, 64)))
    assert [r[3] for r in runs] == [2500, 2500, 2048, 2049, 1200]
    for _ in range(3):
        np.testing.assert_allclose(two.attend(q, segs, kn, vn), one, atol=ATOL, rtol=0)
    np.testing.assert_allclose(one, attend_reference(q, segs, kn, vn), atol=ATOL, rtol=0)
