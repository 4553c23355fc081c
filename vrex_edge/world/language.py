"""Targets from the event log: narration sentences, questions with answers, and the word vocabulary.

Narration grammar (one sentence per event):
    enter   "the {size} {color} {shape} enters from the {side}"   (at the frame it pops in at
            that side, mostly visible: sim.py places its centre inside the canvas)
    leave   "the {color} {shape} leaves to the {side}"
    turn    "the {color} {shape} turns {direction}"
    stop    "the {color} {shape} stops"
    start   "the {color} {shape} starts moving {direction}"
    recolor "the {color} {shape} becomes {new_color}"
Question kinds: "state" (now), "count" (since the start), "recall" (the first/second objects).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vrex_edge.world.sim import CANVAS, COLORS, DIRS, SHAPES, SIDES, SIZES, Event, ObjState, Stream

SPECIALS = ("<pad>", "<unk>", "<bos>", "<v>", "<int>", "<user>", "<asst>", "<eot>")
NUMBERS = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen twenty"
).split()
NUMBERS += [f"twenty {w}" for w in NUMBERS[1:10]] + ["thirty"] + [f"thirty {w}" for w in NUMBERS[1:10]] + ["forty"]
REGIONS = (("top left", "top", "top right"), ("left", "center", "right"), ("bottom left", "bottom", "bottom right"))
QUESTION_KINDS = ("state", "count", "recall")
ORDINALS = ("first", "second")


@dataclass(frozen=True)
class Question:
    frame: int  # asked right after this frame (and its narration, if any)
    kind: str  # state | count | recall
    text: str
    answer: str

    @property
    def time(self) -> float:
        return self.frame / 2.0

    def to_dict(self) -> dict[str, object]:
        return {"time": self.time, "frame": self.frame, "kind": self.kind, "question": self.text, "answer": self.answer}


def narrate(e: Event) -> str:
    name = f"{e.color} {e.shape}"
    if e.kind == "enter":
        return f"the {e.size} {name} enters from the {e.side}"
    if e.kind == "leave":
        return f"the {name} leaves to the {e.side}"
    if e.kind == "turn":
        return f"the {name} turns {e.direction}"
    if e.kind == "stop":
        return f"the {name} stops"
    if e.kind == "start":
        return f"the {name} starts moving {e.direction}"
    if e.kind == "recolor":
        return f"the {name} becomes {e.new_color}"
    raise ValueError(f"unknown event kind {e.kind}")


def vocabulary() -> list[str]:
    words = set(COLORS) | set(SHAPES) | set(SIDES) | set(DIRS) | set(SIZES) | set(ORDINALS)
    words |= {w for n in NUMBERS for w in n.split()} | {w for row in REGIONS for r in row for w in r.split()}
    words |= set("the enters from leaves to turns stops starts moving becomes".split())
    words |= set(
        "where is what doing how many objects are there have entered left colour was object "
        "shape size did come standing still ?".split()
    )
    return list(SPECIALS) + sorted(words)


def build_tokenizer(path: str | Path) -> Path:
    """Write a word-level tokenizer.json (WordLevel + whitespace pre-tokenizer)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {w: i for i, w in enumerate(vocabulary())}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with spaces
    tok.add_special_tokens(list(SPECIALS))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(path))
    json.loads(path.read_text())  # sanity: valid JSON
    return path


class Vocab:
    """Word <-> id without the tokenizers library (same ids as build_tokenizer)."""

    def __init__(self) -> None:
        self.words = vocabulary()
        self.ids = {w: i for i, w in enumerate(self.words)}

    def encode(self, text: str) -> list[int]:
        return [self.ids[w] for w in text.split()]

    def decode(self, ids: list[int]) -> str:
        return " ".join(self.words[i] for i in ids)

    def __getitem__(self, w: str) -> int:
        return self.ids[w]


def number(n: int) -> str:
    return NUMBERS[min(n, len(NUMBERS) - 1)]


def region(o: ObjState) -> str | None:
    """3x3 region of the object's centre, or None when it is near a boundary (ambiguous)."""
    third = CANVAS / 3.0
    cells = []
    for v in (o.y, o.x):
        c = int(np.clip(v // third, 0, 2))
        if min(abs(v - third), abs(v - 2 * third)) < 5.0:
            return None
        cells.append(c)
    return REGIONS[cells[0]][cells[1]]


def _state_questions(stream: Stream, f: int) -> list[Question]:
    objs = [o for o in stream.states[f] if o.fully_visible()]
    out = [
        Question(f, "state", "how many objects are there ?", number(len([o for o in stream.states[f] if _visible(o)])))
    ]
    for o in objs:
        name = f"{o.color} {o.shape}"
        reg = region(o)
        if reg is not None:
            out.append(Question(f, "state", f"where is the {name} ?", reg))
        doing = f"moving {o.direction}" if o.direction else "standing still"
        out.append(Question(f, "state", f"what is the {name} doing ?", doing))
    return out


def _visible(o: ObjState) -> bool:
    r = o.radius
    return -r < o.x < CANVAS + r and -r < o.y < CANVAS + r


def _count_questions(stream: Stream, f: int) -> list[Question]:
    past = [e for e in stream.events if e.frame <= f]
    n_in = sum(e.kind == "enter" for e in past)
    n_out = sum(e.kind == "leave" for e in past)
    return [
        Question(f, "count", "how many objects have entered ?", number(n_in)),
        Question(f, "count", "how many objects have left ?", number(n_out)),
    ]


def _recall_questions(stream: Stream, f: int, min_age: int) -> list[Question]:
    enters = [e for e in stream.events if e.kind == "enter" and e.frame <= f - min_age]
    out = []
    for i, e in enumerate(enters[:2]):
        o = ORDINALS[i]
        out += [
            Question(f, "recall", f"what colour was the {o} object ?", e.color),
            Question(f, "recall", f"what shape was the {o} object ?", e.shape),
            Question(f, "recall", f"what size was the {o} object ?", e.size),
            Question(f, "recall", f"where did the {o} object come from ?", e.side),
        ]
    return out


def questions_at(stream: Stream, f: int, kind: str, *, min_age: int = 0) -> list[Question]:
    """All well-defined questions of `kind` at frame f (recall: entries >= min_age frames back)."""
    if kind == "state":
        return _state_questions(stream, f)
    if kind == "count":
        return _count_questions(stream, f)
    return _recall_questions(stream, f, min_age)


def sample_questions(
    stream: Stream, rng: np.random.Generator, *, every_s: float = 20.0, recall_min_age_s: float = 30.0
) -> list[Question]:
    """Questions at random times (about one per `every_s` seconds), kinds mixed evenly."""
    out: list[Question] = []
    n = stream.n_frames
    k = rng.poisson(n / (every_s * 2.0))
    for f in sorted(int(x) for x in rng.integers(0, n, size=k)):
        kind = QUESTION_KINDS[rng.integers(3)]
        cands = questions_at(stream, f, kind, min_age=int(recall_min_age_s * 2 * rng.random()))
        if cands:
            out.append(cands[rng.integers(len(cands))])
    return out


def eval_questions(stream: Stream, seed: int, *, per_kind: int = 4, recall_min_age_s: float = 60.0) -> list[Question]:
    """Held-out questions: `per_kind` of each kind, recall ones asked >= recall_min_age_s after the entry."""
    rng = np.random.default_rng(seed + 7_919)
    out: list[Question] = []
    n = stream.n_frames
    for kind in QUESTION_KINDS:
        lo = max(int(recall_min_age_s * 2), n // 2) if kind == "recall" else 10
        for _ in range(per_kind * 4):
            if len([q for q in out if q.kind == kind]) >= per_kind or lo >= n:
                break
            f = int(rng.integers(lo, n))
            cands = questions_at(stream, f, kind, min_age=int(recall_min_age_s * 2))
            if cands:
                out.append(cands[rng.integers(len(cands))])
    return sorted(out, key=lambda q: q.frame)
