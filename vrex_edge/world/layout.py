"""The stream token layout (bundle.PromptSpec) for training, and frame preprocessing.

    system, then per frame: [<int> if the previous item was a silent frame] + T_v x <v>;
    the last <v> of a frame predicts <int> (silent) or <asst> (an event: narration follows);
    narration: <asst> words <eot>; a question: <user> words <asst> answer <eot>.
Loss at: each frame's last token, narration words + <eot>, answer words + <eot>.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from vrex_edge.world.language import Question, Vocab, narrate
from vrex_edge.world.sim import Stream

TOKENS_PER_FRAME = 10
IGNORE = -100


@dataclass(frozen=True)
class Layout:
    input_ids: np.ndarray  # [L] int64
    labels: np.ndarray  # [L] int64, target predicted AT each position (IGNORE elsewhere)
    kinds: np.ndarray  # [L] int8: 0 none, 1 frame decision, 2 narration, 3 answer


def special_ids(v: Vocab) -> dict[str, int]:
    return {k: v[f"<{k}>"] for k in ("pad", "bos", "v", "int", "user", "asst", "eot")}


def build_layout(stream: Stream, questions: list[Question], v: Vocab) -> Layout:
    sp = special_ids(v)
    ids: list[int] = [sp["bos"]]
    labels: list[int] = [IGNORE]
    kinds: list[int] = [0]
    by_frame: dict[int, list[Question]] = {}
    for q in questions:
        by_frame.setdefault(q.frame, []).append(q)
    events = stream.events_at()

    def reply(words: list[int], kind: int) -> None:
        # the position before each word predicts it; the last word predicts <eot>
        labels[-1] = words[0] if words else sp["eot"]
        kinds[-1] = kind if kinds[-1] == 0 else kinds[-1]
        for i, w in enumerate(words):
            ids.append(w)
            labels.append(words[i + 1] if i + 1 < len(words) else sp["eot"])
            kinds.append(kind)
        ids.append(sp["eot"])
        labels.append(IGNORE)
        kinds.append(0)

    silent_before = False
    for f in range(stream.n_frames):
        if silent_before:
            ids.append(sp["int"]), labels.append(IGNORE), kinds.append(0)
        ids.extend([sp["v"]] * TOKENS_PER_FRAME)
        labels.extend([IGNORE] * TOKENS_PER_FRAME)
        kinds.extend([0] * TOKENS_PER_FRAME)
        kinds[-1] = 1
        e = events.get(f)
        if e is None:
            labels[-1] = sp["int"]
            silent_before = True
        else:
            labels[-1] = sp["asst"]
            ids.append(sp["asst"]), labels.append(IGNORE), kinds.append(0)
            reply(v.encode(narrate(e)), 2)
            silent_before = False
        for q in by_frame.get(f, []):
            ids.append(sp["user"]), labels.append(IGNORE), kinds.append(0)
            for w in v.encode(q.text):
                ids.append(w), labels.append(IGNORE), kinds.append(0)
            ids.append(sp["asst"]), labels.append(IGNORE), kinds.append(0)
            reply(v.encode(q.answer), 3)
            silent_before = False
    return Layout(np.array(ids, np.int64), np.array(labels, np.int64), np.array(kinds, np.int8))


def preprocess(bgr: np.ndarray, size: int, *, interp: int = cv2.INTER_AREA) -> np.ndarray:
    """Frames [N, H, W, 3] uint8 BGR -> [N, size, size, 3] uint8 RGB (the model's input before
    normalisation: x / 255, then (x - 0.5) / 0.5). Square input: the bundle's "pad" resize is a no-op."""
    out = np.empty((len(bgr), size, size, 3), np.uint8)
    for i, img in enumerate(bgr):
        out[i] = cv2.resize(img, (size, size), interpolation=interp)[:, :, ::-1]
    return out
