"""Lanes (runtime/lanes.py) and the retrieval work put on them: the same selections as one lane, the same
outputs to float rounding (a long head's attention is split into pieces on several lanes)."""

from __future__ import annotations

import copy
import threading

import numpy as np
import pytest

from tests.test_retrieval import make_text, run
from vrex_edge.errors import ConfigError
from vrex_edge.runtime.kernels.ort_engine import OrtEngine
from vrex_edge.runtime.lanes import Lanes
from vrex_edge.runtime.retrieval import clusters, gather
from vrex_edge.runtime.retrieval.policy import Policy
from vrex_edge.runtime.retrieval.registry import get_spec
from vrex_edge.runtime.rope import Rope


def test_map_keeps_the_order_spreads_round_robin_and_raises():
    lanes = Lanes(3)
    seen: dict[int, str] = {}

    def f(x: int) -> int:
        seen[x] = threading.current_thread().name
        return x * x

    assert lanes.map(f, list(range(10))) == [x * x for x in range(10)]
    assert {seen[x] for x in (0, 3, 6, 9)} == {threading.current_thread().name}  # lane 0: the caller
    assert all(len({seen[x] for x in range(i, 10, 3)}) == 1 for i in (1, 2))  # a lane runs on one thread
    assert seen[1] != seen[0] and seen[2] != seen[0]
    assert Lanes(1).map(f, [2, 3]) == [4, 9]
    assert copy.deepcopy([lanes])[0] is lanes

    def bad(x: int) -> int:
        if x == 4:
            raise ValueError("item 4")
        return x

    with pytest.raises(ValueError, match="item 4"):
        lanes.map(bad, list(range(6)))
    with pytest.raises(ConfigError):
        Lanes(0)


def resv_on(lanes: int, **options):
    """A resv layer cache whose attention engine (and so its gather and int8 scoring) has `lanes` lanes."""
    text = make_text(hd=32)
    spec = get_spec("resv")
    policy = Policy(spec, spec.options.parse(options))
    policy._engine = OrtEngine(lanes=lanes, numpy_below=1, split_from=8, parallel_from=1)
    return policy(0, text, Rope(text.rope)), text


@pytest.mark.parametrize("opts", [dict(), dict(reps="f32", cluster_batch=7, max_cluster=4, horizon=4)])
def test_resv_on_lanes_equals_one_lane(monkeypatch, opts):
    monkeypatch.setattr(clusters, "LANES_FROM", 1)  # the int8 scoring and the gather on lanes from the start
    monkeypatch.setattr(gather, "LANES_FROM", 1)
    chunks = [37] + [10] * 20 + [1] * 5 + [10] * 10
    (one, text), (two, _) = (resv_on(n, tau=0.8, sink=4, recent=16, **opts) for n in (1, 2))
    for a, b in zip(run(one, text, chunks), run(two, text, chunks), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
    assert np.array_equal(one.totals["prefill"].kept, two.totals["prefill"].kept)
    assert two.gatherer is not None and two.gatherer.n.sum() > 0


def test_callers_on_two_threads_share_the_lanes():
    lanes = Lanes(2)
    out: dict[str, list[int]] = {}

    def caller(name: str, k: int) -> None:
        out[name] = lanes.map(lambda x: x * k, list(range(200)))

    threads = [threading.Thread(target=caller, args=(f"t{k}", k)) for k in (2, 3)]
    for t in threads:
        t.start()
    caller("main", 5)
    for t in threads:
        t.join()
    assert out == {name: [x * k for x in range(200)] for name, k in (("t2", 2), ("t3", 3), ("main", 5))}
