"""Evaluate a vrex-tiny checkpoint on held-out streams (torch reference, full attention).

    python -m vrex_edge.world.evaluate --ckpt models/vrex-tiny/checkpoint --n 50 --out eval.json

Streams use seeds [seed_base, seed_base + n) (< data.TRAIN_SEED_BASE, never seen in training),
durations uniform in [min_s, max_s], rendered, written as mp4 and decoded back (as the runtime
reads them). The model runs the stream layout of layout.py and free-runs: it decides to speak
from P(<int>) < threshold, generates greedily, answers questions. score.py does the scoring.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vrex_edge.world.language import Question, Vocab, eval_questions
from vrex_edge.world.layout import preprocess, special_ids
from vrex_edge.world.render import read_video, render, write_mp4
from vrex_edge.world.score import NarrationScore, score_answers, score_narration
from vrex_edge.world.sim import FPS, Stream, simulate


@dataclass(frozen=True)
class StreamOutput:
    captions: list[tuple[float, str]]
    answers: list[tuple[Question, str]]


class TorchStreamer:
    """Runs one stream through the torch model with a KV cache, frame chunks decided speculatively
    (a chunk assumes silence; the cache is cropped back to the first frame that speaks), which is
    exactly equivalent to frame-by-frame processing."""

    def __init__(self, model, vocab: Vocab, *, threshold: float, chunk: int = 24, max_reply: int = 16):
        import torch

        self.torch, self.model, self.vocab = torch, model, vocab
        self.sp = special_ids(vocab)
        self.threshold, self.chunk, self.max_reply = threshold, chunk, max_reply
        self.dev = next(model.parameters()).device

    def _step(self, emb, cache, pos: int):
        torch = self.torch
        n = emb.shape[1]
        out = self.model.language_model(
            inputs_embeds=emb,
            past_key_values=cache,
            use_cache=True,
            position_ids=torch.arange(pos, pos + n, device=self.dev)[None],
        )
        return out.logits[0].float()  # [n, V]

    def _embed_ids(self, ids: list[int]):
        t = self.torch.tensor([ids], device=self.dev)
        return self.model.language_model.get_input_embeddings()(t)  # [1, n, D]

    def _generate(self, prefix: list[int], cache, pos: int) -> tuple[list[int], int]:
        """Feed prefix, then greedy tokens until <eot> (fed too). -> (words without <eot>, new pos)."""
        out: list[int] = []
        feed = prefix
        for _ in range(self.max_reply + 1):
            logits = self._step(self._embed_ids(feed), cache, pos)
            pos += len(feed)
            tok = int(logits[-1].argmax())
            feed = [tok]
            if tok == self.sp["eot"] or len(out) >= self.max_reply:
                break
            out.append(tok)
        self._step(self._embed_ids([self.sp["eot"]]), cache, pos)  # the reply ends with <eot> in the cache
        return out, pos + 1

    def run(self, frames_rgb: np.ndarray, questions: list[Question]) -> StreamOutput:
        """frames_rgb [N, S, S, 3] uint8 -> captions and answers."""
        torch = self.torch
        from transformers import DynamicCache

        with torch.inference_mode():
            pix = torch.from_numpy(frames_rgb).to(self.dev).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
            ft = torch.cat([self.model.encode_frames(pix[i : i + 256]) for i in range(0, len(pix), 256)])  # [N, T_v, D]
            cache = DynamicCache()
            self._step(self._embed_ids([self.sp["bos"]]), cache, 0)
            pos, silent_before, f, n = 1, False, 0, len(frames_rgb)
            qs = sorted(questions, key=lambda q: q.frame)
            captions, answers = [], []
            int_emb = self._embed_ids([self.sp["int"]])[0]  # [1, D]
            while f < n:
                pending = [q.frame for q in qs if q.frame >= f]
                end = min(n, f + self.chunk, (pending[0] + 1) if pending else n)
                parts, last = [], []
                for j in range(f, end):
                    if j > f or silent_before:
                        parts.append(int_emb)
                    parts.append(ft[j])
                    last.append(sum(p.shape[0] for p in parts) - 1)
                logits = self._step(torch.cat(parts)[None], cache, pos)
                p_int = torch.softmax(logits[last], -1)[:, self.sp["int"]]  # [frames]
                speak = (p_int < self.threshold).nonzero()
                if len(speak):
                    k = int(speak[0])
                    used = last[k] + 1
                    drop = cache.get_seq_length() - (pos + used)
                    if drop > 0:
                        cache.crop(-drop)  # negative: remove the last `drop` tokens
                    pos += used
                    words, pos = self._generate([self.sp["asst"]], cache, pos)
                    captions.append(((f + k) / FPS, self.vocab.decode(words)))
                    f, silent_before = f + k + 1, False
                else:
                    pos += last[-1] + 1
                    f, silent_before = end, True
                for q in [q for q in qs if q.frame == f - 1]:
                    prefix = [self.sp["user"], *self.vocab.encode(q.text), self.sp["asst"]]
                    words, pos = self._generate(prefix, cache, pos)
                    answers.append((q, self.vocab.decode(words)))
                    silent_before = False
        return StreamOutput(captions, answers)


def held_out(seed: int, min_s: float, max_s: float) -> tuple[Stream, list[Question]]:
    rng = np.random.default_rng(seed + 123_457)
    stream = simulate(seed, float(rng.uniform(min_s, max_s)))
    return stream, eval_questions(stream, seed)


def _frames_via_mp4(stream: Stream, size: int) -> np.ndarray:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "s.mp4"
        write_mp4(path, render(stream))
        return preprocess(read_video(path), size)


def _worker(job: tuple[str, list[int], dict]) -> list[dict]:
    ckpt, seeds, opt = job
    import torch

    from vrex_edge.export.modeling import load_checkpoint

    torch.set_num_threads(opt["threads"])
    model = load_checkpoint(ckpt).to(opt["device"])
    size = model.config.frame.image_size[0]
    thr = opt["threshold"] if opt["threshold"] is not None else float(model.config.prompt.get("speak_threshold", 0.5))
    streamer = TorchStreamer(model, Vocab(), threshold=thr)
    out = []
    for seed in seeds:
        stream, qs = held_out(seed, opt["min_s"], opt["max_s"])
        frames = _frames_via_mp4(stream, size) if opt["mp4"] else preprocess(render(stream), size)
        t = time.time()
        res = streamer.run(frames, qs)
        out.append(
            {
                "seed": seed,
                "duration": stream.duration,
                "wall_s": time.time() - t,
                "events": len(stream.events),
                "captions": res.captions,
                "answers": [(q.to_dict(), a) for q, a in res.answers],
            }
        )
    return out


def report(results: list[dict], min_s: float, max_s: float) -> dict:
    """Score every stream (re-simulated from its seed) and aggregate."""
    narr = NarrationScore(0, 0, 0, 0, {})
    answers = []
    for r in results:
        stream, qs = held_out(r["seed"], min_s, max_s)
        narr = narr + score_narration([tuple(c) for c in r["captions"]], stream.events)
        by_text = {(q.frame, q.text): q for q in qs}
        answers += [(by_text[(d["frame"], d["question"])], a) for d, a in r["answers"]]
    acc = score_answers(answers)
    return {
        "streams": len(results),
        "minutes": round(sum(r["duration"] for r in results) / 60, 1),
        "narration_f1": round(narr.f1, 4),
        "narration_timing_f1": round(narr.timing_f1, 4),
        "events": narr.events,
        "captions": narr.captions,
        "matched": narr.matched,
        "recall_by_event_kind": {k: round(m / max(1, t), 3) for k, (m, t) in sorted(narr.by_kind.items())},
        "question_accuracy": {k: round(c / max(1, t), 4) for k, (c, t) in acc.items()},
        "questions": {k: t for k, (c, t) in acc.items()},
    }


def run_jobs(worker: Callable[[Any], list[dict]], jobs: list) -> list[dict]:
    """worker(job) for each job, in spawned processes when there are several -> results in job order."""
    if len(jobs) == 1:
        return worker(jobs[0])
    import multiprocessing as mp

    with mp.get_context("spawn").Pool(len(jobs)) as pool:
        return [r for part in pool.map(worker, jobs) for r in part]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--seed-base", type=int, default=0)
    ap.add_argument("--min-s", type=float, default=120.0)
    ap.add_argument("--max-s", type=float, default=600.0)
    ap.add_argument(
        "--threshold", type=float, default=None, help="speak when P(<int>) < this (default: the checkpoint's)"
    )
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--procs", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-mp4", dest="mp4", action="store_false")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    seeds = list(range(args.seed_base, args.seed_base + args.n))
    opt = {k: getattr(args, k) for k in ("device", "threads", "threshold", "min_s", "max_s", "mp4")}
    jobs = [(args.ckpt, seeds[i :: args.procs], opt) for i in range(args.procs)]
    t0 = time.time()
    results = run_jobs(_worker, jobs)
    rep = report(results, args.min_s, args.max_s)
    rep["wall_s"] = round(time.time() - t0, 1)
    rep["settings"] = {k: v for k, v in vars(args).items() if k != "out"} | {"ckpt": str(args.ckpt)}
    text = json.dumps(rep, indent=1)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
        (args.out.with_suffix(".streams.json")).write_text(json.dumps(results) + "\n")
    print(text)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
