"""The synthetic world: determinism, event log vs rendered frames, targets, token layout, mp4, scoring."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vrex_edge.world.language import (
    QUESTION_KINDS,
    SPECIALS,
    Vocab,
    build_tokenizer,
    eval_questions,
    narrate,
    questions_at,
    sample_questions,
)
from vrex_edge.world.layout import IGNORE, TOKENS_PER_FRAME, build_layout, special_ids
from vrex_edge.world.render import BGR, read_video, render, write_mp4
from vrex_edge.world.score import score_answers, score_narration
from vrex_edge.world.sim import CANVAS, DIRS, MIN_GAP, simulate

SEEDS = (3, 11, 12345)


@pytest.fixture(scope="module")
def streams():
    return {s: simulate(s, 150) for s in SEEDS}


def test_deterministic_per_seed(streams):
    a, b = simulate(11, 150), streams[11]
    assert a.events == b.events and a.states == b.states
    assert np.array_equal(render(simulate(11, 10)), render(simulate(11, 10)))
    assert simulate(12, 150).events != a.events
    assert not np.array_equal(render(simulate(12, 10)), render(simulate(11, 10)))


def test_events_are_spaced_and_varied(streams):
    kinds = set()
    for s in streams.values():
        frames = [e.frame for e in s.events]
        assert frames == sorted(frames)
        assert (np.diff(frames) >= MIN_GAP).all()
        kinds |= {e.kind for e in s.events}
    assert {"enter", "leave", "turn", "stop", "start"} <= kinds


def _obj(state, oid):
    return next((o for o in state if o.obj == oid), None)


def test_event_log_matches_states(streams):
    for s in streams.values():
        for e in s.events:
            now, before = _obj(s.states[e.frame], e.obj), _obj(s.states[e.frame - 1], e.obj)
            if e.kind == "enter":
                assert now is not None and before is None
            elif e.kind == "leave":
                assert now is None and before is not None
            elif e.kind == "stop":
                assert (now.x, now.y) == (before.x, before.y) and now.direction is None
            elif e.kind in ("turn", "start"):
                dx, dy = DIRS[e.direction]
                assert np.sign(now.x - before.x) == dx and np.sign(now.y - before.y) == dy
            elif e.kind == "recolor":
                assert (before.color, now.color) == (e.color, e.new_color)
            if now is not None and e.kind != "recolor":
                assert (now.color, now.shape, now.size) == (e.color, e.shape, e.size)


def test_entered_objects_are_drawn(streams):
    s = streams[3]
    video = render(s)  # [N, H, W, 3] BGR
    checked = 0
    for e in s.events:
        if e.kind != "enter":
            continue
        o = _obj(s.states[e.frame + 3], e.obj)  # a few frames in: well inside
        if o is None or not o.fully_visible():
            continue
        r = int(o.radius * 0.5)
        x, y = int(o.x), int(o.y)
        patch = video[e.frame + 3, y - r : y + r + 1, x - r : x + r + 1].astype(int)  # object core
        err = np.abs(patch - np.array(BGR[o.color])).max(-1)
        assert (err < 45).mean() > 0.8, (e, err.mean())
        checked += 1
    assert checked >= 2


def test_targets_tokenize(tmp_path, streams):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(build_tokenizer(tmp_path / "tokenizer.json")))
    vocab = Vocab()
    assert all(tok.token_to_id(w) == vocab[w] for w in vocab.words)
    assert set(SPECIALS) <= set(vocab.words)
    texts = []
    for s in streams.values():
        texts += [narrate(e) for e in s.events]
        for kind in QUESTION_KINDS:
            for f in range(0, s.n_frames, 25):
                for q in questions_at(s, f, kind):
                    texts += [q.text, q.answer]
    unk = vocab["<unk>"]
    for t in texts:
        ids = tok.encode(t).ids
        assert unk not in ids and ids == vocab.encode(t), t
        assert tok.decode(ids) == t
    assert json.loads((tmp_path / "tokenizer.json").read_text())["model"]["type"] == "WordLevel"


def test_questions_are_well_formed(streams):
    s = streams[12345]
    qs = eval_questions(s, s.seed, per_kind=3, recall_min_age_s=40)
    assert {q.kind for q in qs} == set(QUESTION_KINDS)
    first = next(e for e in s.events if e.kind == "enter")
    for q in qs:
        assert q.text.endswith("?") and q.answer
        if q.kind == "recall":
            assert q.frame - first.frame >= 80
            if "first" in q.text and "colour" in q.text:
                assert q.answer == first.color
        if q.text == "how many objects have entered ?":
            n = sum(e.kind == "enter" and e.frame <= q.frame for e in s.events)
            assert q.answer == Vocab().decode([Vocab()[q.answer]]) and n >= 1


def test_layout_follows_stream_protocol(streams):
    s, vocab = streams[11], Vocab()
    sp = special_ids(vocab)
    qs = sample_questions(s, np.random.default_rng(0), every_s=10)
    lay = build_layout(s, qs, vocab)
    ids, labels, kinds = lay.input_ids, lay.labels, lay.kinds
    assert ids[0] == sp["bos"] and (ids == sp["v"]).sum() == TOKENS_PER_FRAME * s.n_frames
    dec = np.flatnonzero(kinds == 1)
    assert len(dec) == s.n_frames and (ids[dec] == sp["v"]).all()
    events = s.events_at()
    for f, p in enumerate(dec):
        assert labels[p] == (sp["asst"] if f in events else sp["int"])
        nxt = ids[p + 1] if p + 1 < len(ids) else None
        if f in events:
            assert nxt == sp["asst"]
        elif nxt is not None and nxt != sp["user"]:
            assert nxt == sp["int"] and ids[p + 2] == sp["v"]  # <int> precedes a frame after silence
    assert (labels[ids == sp["v"]][:-1] != IGNORE).sum() <= s.n_frames
    assert (kinds == 2).sum() == sum(len(narrate(e).split()) + 1 for e in s.events)
    assert not (labels[ids == sp["user"]] != IGNORE).any()


def test_mp4_round_trip(tmp_path):
    s = simulate(5, 8)
    video = render(s)
    path = tmp_path / "clip.mp4"
    write_mp4(path, video)
    back = read_video(path)
    assert back.shape == video.shape == (16, CANVAS, CANVAS, 3)
    assert np.abs(back.astype(int) - video).mean() < 12


def test_scoring(streams):
    s = streams[3]
    truth = [(e.time, narrate(e)) for e in s.events]
    assert score_narration(truth, s.events).f1 == 1.0
    assert score_narration([(t + 1.0, x) for t, x in truth], s.events).f1 == 1.0
    late = score_narration([(t + 1.5, x) for t, x in truth], s.events)
    assert late.f1 == 0.0
    wrong = score_narration([(t, "the red square stops") for t, _ in truth], s.events)
    assert wrong.timing_f1 == 1.0 and wrong.f1 < 0.5
    qs = eval_questions(s, 3)
    acc = score_answers([(q, q.answer) for q in qs[:-1]] + [(qs[-1], "nonsense")])
    assert acc["all"] == (len(qs) - 1, len(qs))


def test_sample_refuses_training_seeds(tmp_path):
    from vrex_edge.world.sample import write_sample

    with pytest.raises(ValueError):
        write_sample(tmp_path / "x", seed=2_000_000, seconds=5)
    mp4, js = write_sample(tmp_path / "demo", seed=7, seconds=12)
    gt = json.loads(js.read_text())
    assert read_video(mp4).shape[0] == gt["frames"] == 24


def test_enter_frame_shows_the_object(streams):
    """At its enter frame an object is mostly visible (centre inside the canvas), so the enter
    narration (size, colour, shape) is well-posed from that frame alone."""
    for s in streams.values():
        for e in (e for e in s.events if e.kind == "enter"):
            o = _obj(s.states[e.frame], e.obj)
            inside = min(o.x, o.y, CANVAS - o.x, CANVAS - o.y)
            assert 0.3 * o.radius - 1e-6 <= inside <= 0.6 * o.radius + 1e-6, (e, o)


def test_name_noise_touches_only_narration_names(streams):
    from vrex_edge.world.data import corrupt_names
    from vrex_edge.world.sim import SHAPES, SIZES

    s, vocab = streams[11], Vocab()
    lay = build_layout(s, sample_questions(s, np.random.default_rng(0), every_s=10), vocab)
    noisy = corrupt_names(lay.input_ids, lay.kinds, vocab, np.random.default_rng(1), 0.5)
    changed = np.flatnonzero(noisy != lay.input_ids)
    names = {vocab[w] for w in (*SHAPES, *SIZES)}
    assert len(changed) > 0 and (lay.kinds[changed] == 2).all()
    assert all(int(lay.input_ids[i]) in names and int(noisy[i]) in names for i in changed)
