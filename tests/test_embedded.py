"""The shipped default model: its bundle verifies, and on the demo video its narration matches
the ground-truth events of the generated world (scored, with a tolerance: not a snapshot)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vrex_edge.bundle import load_manifest
from vrex_edge.cli import default_model
from vrex_edge.runtime.capture import open_video
from vrex_edge.runtime.engine import load_model
from vrex_edge.runtime.events import Answer, Caption
from vrex_edge.runtime.session import StreamSession
from vrex_edge.world.score import score_narration
from vrex_edge.world.sim import simulate

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "samples" / "world_demo"


def test_default_model_is_the_shipped_bundle() -> None:
    m = load_manifest(default_model())  # verifies every sha256
    assert m.name == "vrex-tiny" and m.family == "videollm" and m.vision.tokens_per_frame == 10
    size = sum((default_model() / f).stat().st_size for f in m.files)
    assert size <= 25 * 2**20


def test_demo_ground_truth_is_the_generator_output() -> None:
    truth = json.loads(DEMO.with_suffix(".json").read_text())
    stream = simulate(truth["seed"], truth["duration_s"])
    assert [e["time"] for e in truth["events"]] == [e.time for e in stream.events]


@pytest.mark.parametrize("policy", ["full", "resv"])
def test_demo_narration_matches_ground_truth(policy: str) -> None:
    truth = json.loads(DEMO.with_suffix(".json").read_text())
    events = simulate(truth["seed"], truth["duration_s"]).events
    session = StreamSession(load_model(default_model()), policy=policy)
    questions = [(q["time"], q["question"]) for q in truth["questions"]]
    captions, answers = [], []
    for event in session.run(open_video(DEMO.with_suffix(".mp4"), fps=truth["fps"]), questions):
        if isinstance(event, Caption):
            captions.append((event.t, event.text))
        elif isinstance(event, Answer):
            answers.append(event)
    score = score_narration(captions, events, tol=1.0)
    # The model speaks at the events (timing F1 0.99 on held-out 5-minute streams, 1.0 here) and
    # names most of them exactly (F1 0.90 held out with either policy; here 0.86 with full and 0.59
    # with resv: the demo's first object, a small cross, is named "circle" as it enters and resv
    # repeats that name in the object's later sentences, see the model card); thresholds sit below
    # those with a margin.
    assert score.timing_f1 >= 0.9, score
    assert score.f1 >= 0.5, score
    assert len(answers) == len(questions) and all(a.text for a in answers)
