"""A stream session: iterative prefill of frames, the speak decision, replies and questions.

Token layout (PromptSpec): system, then per frame [frame_interval if the previous item was a
silent frame] + frame_prefix (+ frame_prefix_template formatted with the frame's time) + frame
tokens. P(frame_interval) >= threshold at the frame's last token means silence; otherwise
reply_prefix + a greedy reply until end of turn. A question adds user_prefix + question +
user_suffix + reply_prefix (or the question_template, filled and tokenized as one text) and the
answer; a reply is closed by reply_suffix (which starts with the end-of-turn token), kept pending
and prefilled with the next chunk. The stream methods are generators: nothing runs until they are
iterated.
"""

from __future__ import annotations

import math
import time
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from vrex_edge.errors import ConfigError
from vrex_edge.runtime.engine import Model, uses_cuda
from vrex_edge.runtime.events import Answer, Caption, Event, FrameProcessed, Stats
from vrex_edge.runtime.generate import Generation, greedy, softmax_prob
from vrex_edge.runtime.kvcache import Phase
from vrex_edge.runtime.preprocess import Preprocessor
from vrex_edge.runtime.retrieval import Policy, make_policy
from vrex_edge.runtime.retrieval.options import Options

if TYPE_CHECKING:
    from vrex_edge.bundle import PromptSpec
    from vrex_edge.runtime.kvstore import TierConfig, TierManager
    from vrex_edge.runtime.tokenizer import Tokenizer

STATE = ("position", "pending", "last_hidden", "prev_silent", "started", "counts", "kept")


class StreamSession:
    """One stream over one model: owns the per-layer caches and the position counter."""

    def __init__(
        self,
        model: Model,
        *,
        policy: str | Policy = "full",
        policy_options: Mapping[str, Any] | Options | None = None,
        speak_threshold: float | None = None,
        max_reply_tokens: int | None = None,
        prefill_chunk: int = 512,
        kv: TierConfig | None = None,
    ):
        """policy: a name (with policy_options: typed Options or a mapping of text/values) or a built
        Policy, whose backend the session then owns and closes; kv: put the KV cache on tiers (a
        resident budget and an on-disk store; a policy whose spec allows tiers, i.e. resv)."""
        prompt = model.manifest.prompt
        self.model = model
        self.prompt = prompt
        self.tokens = model.manifest.tokens
        device = "cuda" if uses_cuda(model.providers) else "cpu"  # a built Policy keeps its own
        if isinstance(policy, Policy):
            self.retrieval = policy
        elif isinstance(policy_options, Options):
            self.retrieval = make_policy(policy, policy_options.resolved(), device=device)
        else:
            self.retrieval = make_policy(policy, policy_options, device=device)
        self.policy = self.retrieval.name
        self.tiers: TierManager | None = None
        if kv is not None and not self.retrieval.spec.tiers:
            raise ConfigError(f"--kv-budget, --keep-kv and --resume need --policy resv (got '{self.policy}')")
        if kv is not None:
            from vrex_edge.runtime.kvstore import TierManager

            text = model.text
            self.tiers = TierManager(kv, layers=text.num_layers, kvh=text.num_kv_heads, hd=text.head_dim)
        try:
            storage = self.tiers.storage if self.tiers is not None else None
            self.caches = model.make_caches(self.retrieval, storage)
            if self.tiers is not None:
                self.tiers.bind(self.caches, model)
        except BaseException:
            self._abort()
            raise
        self.speak_threshold = prompt.speak_threshold if speak_threshold is None else float(speak_threshold)
        if math.isnan(self.speak_threshold) or self.speak_threshold < 0:
            raise ConfigError(f"speak threshold must be a probability >= 0, got {self.speak_threshold}")
        self.max_reply_tokens = prompt.max_reply_tokens if max_reply_tokens is None else int(max_reply_tokens)
        if self.max_reply_tokens < 1:
            raise ConfigError(f"max reply tokens must be >= 1, got {self.max_reply_tokens}")
        if prefill_chunk < 1:
            raise ConfigError(f"prefill chunk must be >= 1, got {prefill_chunk}")
        self.prefill_chunk = prefill_chunk
        self._pre = Preprocessor(model.vision_spec) if model.vision_spec is not None else None
        self.position = 0  # next stream position
        self._pending: list[int] = []  # decided tokens not yet in the cache
        self._last_hidden: np.ndarray | None = None  # [1, D] hidden of the last fed token
        self._prev_silent = False
        self._started = False
        self._t0 = time.perf_counter()
        self._frame_ms: list[float] = []
        self._counts = {"captions": 0, "answers": 0, "generated": 0}
        self._stage_s: dict[str, float] = {}
        self._kept = {"prefill": [0, 0], "decode": [0, 0]}  # phase -> [history tokens kept, history tokens]
        self._policy_s: dict[str, float] = {}
        self.resumed_time: float | None = None  # --resume: the stream time the kept stream goes on from
        if kv is not None and kv.resume is not None:  # last: a resumed stream overwrites the state set above
            from vrex_edge.runtime.kvstore.resume import restore

            try:
                self.resumed_time = restore(self.tiers, self, kv.resume)
            except BaseException:
                self._abort()
                raise

    def _abort(self) -> None:
        if self.tiers is not None:
            self.tiers.close(ok=False)
        self.retrieval.close()

    def close(self, *, ok: bool = True, stream_time: float | None = None) -> None:
        """End the session: a temporary KV store is deleted; a kept one is saved for resuming
        (ok=False after a failure: the saved state is left as it was). stream_time: where a resume goes
        on. The retrieval backend is closed."""
        try:
            if self.tiers is not None:
                from vrex_edge.runtime.kvstore.resume import save

                mgr = self.tiers
                mgr.close(ok=ok, save=lambda: save(mgr, self, mgr.folder, stream_time=stream_time))
        finally:
            self.retrieval.close()

    # ------------------------------------------------------------------ declared state

    def state(self) -> dict[str, Any]:
        """The stream's own state (the caches declare theirs): position, tokens not yet fed, the last
        hidden state, counters."""
        return {
            "position": self.position,
            "pending": list(self._pending),
            "last_hidden": self._last_hidden,
            "prev_silent": self._prev_silent,
            "started": self._started,
            "counts": dict(self._counts),
            "kept": {k: list(v) for k, v in self._kept.items()},
        }

    def restore(self, s: dict[str, Any]) -> None:
        missing = [k for k in STATE if k not in s]
        if missing:
            raise ValueError(f"session state lacks {', '.join(missing)}")
        self.position, self._pending = int(s["position"]), [int(t) for t in s["pending"]]
        h = s["last_hidden"]
        self._last_hidden = None if h is None else np.asarray(h, np.float32)
        self._prev_silent, self._started = bool(s["prev_silent"]), bool(s["started"])
        self._counts = {k: int(v) for k, v in s["counts"].items()}
        self._kept = {k: [int(x) for x in v] for k, v in s["kept"].items()}

    # ------------------------------------------------------------------ feeding

    def _collect(self, phase: Phase) -> None:
        acc = self._kept[phase]
        for cache in self.caches:
            st = cache.stats()
            acc[0] += int(np.sum(st.kept))
            acc[1] += st.history * len(st.kept)
            for k, v in st.seconds.items():
                self._policy_s[k] = self._policy_s.get(k, 0.0) + v

    def _feed(self, ids: Sequence[int], frame: np.ndarray | None = None, *, phase: Phase = "prefill") -> None:
        """Prefill pending + ids (+ frame embeddings [T_v, D]) as one chunk."""
        ids = self._pending + list(ids)
        self._pending = []
        parts = ([self.model.embed(ids)] if ids else []) + ([frame] if frame is not None else [])
        if not parts:
            return
        emb = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)  # [n, D]
        n = emb.shape[0]
        positions = np.arange(self.position, self.position + n, dtype=np.int64)  # [n]
        lookahead = self.tiers.prefetcher if self.tiers is not None else None
        hidden = self.model.forward(emb, positions, self.caches, phase, lookahead=lookahead)  # [n, D]
        self.position += n
        self._last_hidden = hidden[-1:]
        self._collect(phase)

    def _logits(self) -> np.ndarray:
        """Next-token logits [V] after everything fed (pending tokens are fed first)."""
        if self._pending:
            self._feed([])
        if self._last_hidden is None:
            raise ConfigError("nothing has been fed to the session yet")
        return self.model.head(self._last_hidden)[0]  # [V]

    def _step(self, token: int) -> np.ndarray:
        self._feed([token], phase="decode")
        return self.model.head(self._last_hidden)[0]  # [V]

    def _drain_timer(self) -> dict[str, float]:
        sec = self.model.timer.reset()
        for k, v in sec.items():
            self._stage_s[k] = self._stage_s.get(k, 0.0) + v
        return sec

    def _reply(self, ids: Sequence[int]) -> Generation:
        """Prefill ids (ending with reply_prefix), generate a reply, leave its tail pending."""
        self._feed(ids)
        gen = greedy(self._logits(), self._step, max_tokens=self.max_reply_tokens, stop_ids=self.tokens.end_of_turn)
        # reply_suffix closes a turn and starts with the end-of-turn token the model emits; a capped
        # reply is closed the same way, so the stream layout stays well formed.
        close = list(self.prompt.reply_suffix_ids) or [self.tokens.end_of_turn[0]]
        last = gen.tokens[-1]
        self._pending = close if gen.stopped and last == close[0] else [last, *close]
        self._prev_silent = False
        self._counts["generated"] += len(gen.tokens)
        self._drain_timer()
        return gen

    def _text(self, gen: Generation) -> str:
        toks = gen.tokens[:-1] if gen.stopped else gen.tokens
        return self.model.tokenizer.decode(toks).strip()

    # ------------------------------------------------------------------ stream API

    def start(self) -> None:
        """Prefill the system prompt (once; push_frame/ask/run call it when needed)."""
        if self._started:
            return
        self._started = True
        self._t0 = time.perf_counter()
        self.model.timer.reset()
        self._feed(self.prompt.system_ids)
        self._drain_timer()

    def push_frame(self, frame_bgr: np.ndarray, t: float) -> Iterator[Event]:
        """A BGR uint8 frame [h, w, 3] at stream time t -> FrameProcessed (+ Caption if it speaks)."""
        if self._pre is None:
            raise ConfigError(f"bundle '{self.model.manifest.name}' is text-only: it cannot take frames")
        self.start()
        t0 = time.perf_counter()
        pixels = self._pre(frame_bgr)[None]  # [1, 3, H, W]
        t_pre = time.perf_counter() - t0
        embeds = self.model.vision(pixels)[0]  # [T_v, D]
        yield from self._push(embeds, t, t0, t_pre)

    def push_frame_embeds(self, embeds: np.ndarray, t: float) -> Iterator[Event]:
        """Like push_frame with the vision stage already applied: embeds [T_v, D]."""
        self.start()
        yield from self._push(np.asarray(embeds, dtype=np.float32), t, time.perf_counter(), 0.0)

    def _push(self, embeds: np.ndarray, t: float, t0: float, t_pre: float) -> Iterator[Event]:
        fi = self.tokens.frame_interval
        ids = ([fi] if self._prev_silent and fi is not None else []) + list(self.prompt.frame_prefix_ids)
        if self.prompt.frame_prefix_template:  # e.g. a timestamp before each frame (SmolVLM2)
            ids += self.model.tokenizer.encode(frame_prefix_text(self.prompt.frame_prefix_template, t))
        self._feed(ids, embeds)
        p = softmax_prob(self._logits(), fi) if fi is not None else None
        spoke = p is not None and p < self.speak_threshold
        t_end = time.perf_counter()
        timings = {k: v * 1e3 for k, v in self._drain_timer().items()}
        timings["preprocess"] = t_pre * 1e3
        timings["total"] = (t_end - t0) * 1e3
        self._frame_ms.append(timings["total"])
        self._prev_silent = not spoke
        yield FrameProcessed(len(self._frame_ms) - 1, float(t), timings, self.caches[0].length, spoke, p)
        if spoke:
            gen = self._reply(self.prompt.reply_prefix_ids)
            self._counts["captions"] += 1
            yield Caption(float(t), self._text(gen), len(gen.tokens), (time.perf_counter() - t_end) * 1e3)

    def ask(self, question: str, t: float) -> Iterator[Event]:
        """Insert a question at stream time t and answer it -> Answer."""
        self.start()
        t0 = time.perf_counter()
        gen = self._reply(question_ids(self.prompt, self.model.tokenizer, question))
        self._counts["answers"] += 1
        yield Answer(float(t), question, self._text(gen), len(gen.tokens), (time.perf_counter() - t0) * 1e3)

    def run(
        self, frames: Iterable[tuple[float, np.ndarray]], questions: Sequence[tuple[float, str]] = ()
    ) -> Iterator[Event]:
        """Feed (t, frame_bgr) pairs; each question is asked after the frames with t <= its time.
        Ends with Stats."""
        self.start()
        qs = sorted(questions, key=lambda q: q[0])
        qi = 0
        for t, frame in frames:
            while qi < len(qs) and qs[qi][0] < t:
                yield from self.ask(qs[qi][1], qs[qi][0])
                qi += 1
            yield from self.push_frame(frame, t)
        for tq, q in qs[qi:]:
            yield from self.ask(q, tq)
        yield self.stats()

    def stats(self) -> Stats:
        """Summary of the stream so far."""
        ms = np.asarray(self._frame_ms, dtype=np.float64)
        wall = time.perf_counter() - self._t0
        pct = (lambda q: float(np.percentile(ms, q))) if ms.size else (lambda q: 0.0)
        retrieval: dict[str, Any] = {"policy": self.policy}
        for phase, (kept, hist) in self._kept.items():
            retrieval[f"{phase}_kept_fraction"] = kept / hist if hist else 1.0
        retrieval["seconds"] = dict(self._policy_s)
        if self.tiers is not None:
            retrieval["tiers"] = self.tiers.report()
        return Stats(
            frames=int(ms.size),
            tokens=self.caches[0].length,
            frame_ms_mean=float(ms.mean()) if ms.size else 0.0,
            frame_ms_median=pct(50),
            frame_ms_p95=pct(95),
            fps=ms.size / wall if wall > 0 else 0.0,
            cache_bytes=self.cache_bytes,
            captions=self._counts["captions"],
            answers=self._counts["answers"],
            generated_tokens=self._counts["generated"],
            wall_s=wall,
            stage_ms={k: v * 1e3 for k, v in self._stage_s.items()},
            retrieval=retrieval,
        )

    @property
    def cache_bytes(self) -> int:
        if self.tiers is not None:  # resident KV under the budget (the layers share one workspace)
            return self.tiers.resident()["kv"]
        return sum(c.nbytes() for c in self.caches)

    # ------------------------------------------------------------------ text-only API

    def prefill_text(self, ids: Sequence[int]) -> None:
        """Feed token ids (chunks of at most `prefill_chunk`); pending tokens go first."""
        ids = list(ids)
        for i in range(0, len(ids), self.prefill_chunk):
            self._feed(ids[i : i + self.prefill_chunk])
        if not ids and self._pending:
            self._feed([])

    def next_logits(self) -> np.ndarray:
        """Next-token logits [V] after everything fed so far."""
        return self._logits()

    def generate(self, max_tokens: int, *, stop_ids: Collection[int] | None = None) -> list[int]:
        """Greedy tokens from here (stop_ids None = the bundle's end of turn; () = never stop).
        The last token stays pending: it is fed with the next chunk."""
        stops = self.tokens.end_of_turn if stop_ids is None else stop_ids
        gen = greedy(self._logits(), self._step, max_tokens=max_tokens, stop_ids=stops)
        self._pending = gen.tokens[-1:]
        self._counts["generated"] += len(gen.tokens)
        return gen.tokens


def question_ids(prompt: PromptSpec, tokenizer: Tokenizer, question: str) -> list[int]:
    """The tokens a question adds. A question_template is filled and tokenized as one text: tokenizing
    its pieces apart would split merges the original makes across the question's edges (" what", "?\\n")."""
    if prompt.question_template:
        return tokenizer.encode(prompt.question_template.format(question=question))
    return [*prompt.user_prefix_ids, *tokenizer.encode(question), *prompt.user_suffix_ids, *prompt.reply_prefix_ids]


def frame_prefix_text(template: str, t: float) -> str:
    """The per-frame text of PromptSpec.frame_prefix_template at stream time t (seconds)."""
    s = max(0, int(t))
    return template.format(mm=s // 60, ss=s % 60, t=float(t))
