"""Positions beyond the trained context, on the embedded model (issue: ReSV item 8).

vrex-tiny was trained on 32K positions, too many to pass in a CI-sized test, so the runtime is
told the context is 2,048 positions: a 7-minute world stream (~10K tokens) then runs ~5x past
it. With compact positions the attended set (sink, retrieved clusters in stream order, recent
window, chunk) is renumbered inside the context, and recall answers about the start of the
stream must stay as correct as full attention's (which runs inside the model's real context);
a sliding window, which forgets, must do worse on them.
"""

from __future__ import annotations

import dataclasses

import pytest

from vrex_edge.cli import default_model
from vrex_edge.runtime.engine import load_model
from vrex_edge.runtime.events import Answer, FrameProcessed
from vrex_edge.runtime.session import StreamSession
from vrex_edge.world.language import Question, questions_at
from vrex_edge.world.render import frames as render_frames
from vrex_edge.world.sim import FPS, simulate

CONTEXT = 2048
SEED, SECONDS = 4321, 420.0
ASK_AT = (500, 600, 700, 780, 830)  # frames; the context is passed at ~frame 170


@pytest.fixture(scope="module")
def world() -> tuple[list, list[Question]]:
    stream = simulate(SEED, SECONDS)
    questions = []
    for i, f in enumerate(ASK_AT):
        for kind in ("state", "recall"):
            cands = questions_at(stream, f, kind, min_age=240)  # recall: entries >= 2 min back
            if cands:
                questions.append(cands[i % len(cands)])
    return list(render_frames(stream)), questions


def _answers(
    frames: list, questions: list[Question], policy: str, context: int | None, **opts: object
) -> tuple[dict[str, int], int]:
    """-> correct answers per question kind, the widest attended set (tokens)."""
    model = load_model(default_model())
    if context is not None:
        model.text = dataclasses.replace(model.text, max_positions=context)
    session = StreamSession(model, policy=policy, policy_options=opts)
    got, widest = {}, 0
    asked = [(q.time, q.text) for q in questions]
    for ev in session.run(((i / FPS, img) for i, img in enumerate(frames)), asked):
        if isinstance(ev, Answer):
            got[(ev.t, ev.question)] = ev.text
        elif isinstance(ev, FrameProcessed) and context is not None:
            widest = max(widest, max(int(c.stats().kept.max()) for c in session.caches))
    acc: dict[str, list[int]] = {}
    for q in questions:
        acc.setdefault(q.kind, []).append(int(got.get((q.time, q.text)) == q.answer))
    assert session.position > 4 * CONTEXT
    return {k: sum(v) for k, v in acc.items()}, widest


def test_compact_resv_keeps_recall_far_past_the_context(world) -> None:
    frames, questions = world
    assert {q.kind for q in questions} == {"state", "recall"}
    full, _ = _answers(frames, questions, "full", None)
    resv, widest = _answers(frames, questions, "resv", CONTEXT, positions="compact")
    window, _ = _answers(frames, questions, "window", CONTEXT, positions="compact")
    assert widest < CONTEXT  # every attended set fit the context
    assert resv["recall"] >= full["recall"] - 1, (full, resv)  # at most one recall answer lost
    assert resv["state"] >= full["state"] - 1, (full, resv)
    assert window["recall"] < resv["recall"], (window, resv)
