"""Scoring, independent of what produced the output (torch reference or the ONNX runtime).

Narration: a caption (time, text) matches an event when |time - event time| <= tolerance and its
text is the event's narration; matching is one-to-one (closest first). Questions: exact answer.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from vrex_edge.world.language import QUESTION_KINDS, Question, narrate
from vrex_edge.world.sim import Event


@dataclass(frozen=True)
class NarrationScore:
    events: int
    captions: int
    matched: int  # text and time match
    timed: int  # time matches, text may not
    by_kind: dict[str, tuple[int, int]]  # event kind -> (matched, events)

    @staticmethod
    def _f1(m: int, n_pred: int, n_true: int) -> float:
        p = m / n_pred if n_pred else 1.0
        r = m / n_true if n_true else 1.0
        return 2 * p * r / (p + r) if p + r else 0.0

    @property
    def f1(self) -> float:
        return self._f1(self.matched, self.captions, self.events)

    @property
    def timing_f1(self) -> float:
        return self._f1(self.timed, self.captions, self.events)

    def __add__(self, o: NarrationScore) -> NarrationScore:
        kinds = {
            k: (
                self.by_kind.get(k, (0, 0))[0] + o.by_kind.get(k, (0, 0))[0],
                self.by_kind.get(k, (0, 0))[1] + o.by_kind.get(k, (0, 0))[1],
            )
            for k in set(self.by_kind) | set(o.by_kind)
        }
        return NarrationScore(
            self.events + o.events, self.captions + o.captions, self.matched + o.matched, self.timed + o.timed, kinds
        )


def _match(captions: Sequence[tuple[float, str]], events: Sequence[Event], tol: float, same_text: bool) -> list[int]:
    """Indices of matched events (one-to-one, closest pairs first)."""
    pairs = []
    for ci, (t, text) in enumerate(captions):
        for ei, e in enumerate(events):
            dt = abs(t - e.time)
            if dt <= tol + 1e-9 and (not same_text or text.strip() == narrate(e)):
                pairs.append((dt, ci, ei))
    used_c, used_e = set(), []
    for _, ci, ei in sorted(pairs):
        if ci not in used_c and ei not in used_e:
            used_c.add(ci)
            used_e.append(ei)
    return used_e


def score_narration(
    captions: Sequence[tuple[float, str]], events: Sequence[Event], *, tol: float = 1.0
) -> NarrationScore:
    matched = _match(captions, events, tol, True)
    timed = _match(captions, events, tol, False)
    by_kind: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for i, e in enumerate(events):
        by_kind[e.kind][1] += 1
        by_kind[e.kind][0] += i in matched
    return NarrationScore(
        len(events), len(captions), len(matched), len(timed), {k: (v[0], v[1]) for k, v in by_kind.items()}
    )


def score_answers(answers: Sequence[tuple[Question, str]]) -> dict[str, tuple[int, int]]:
    """-> kind -> (correct, asked), plus "all"."""
    out = {k: [0, 0] for k in (*QUESTION_KINDS, "all")}
    for q, a in answers:
        ok = int(a.strip() == q.answer)
        for k in (q.kind, "all"):
            out[k][0] += ok
            out[k][1] += 1
    return {k: (v[0], v[1]) for k, v in out.items()}
