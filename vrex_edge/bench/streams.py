"""The benchmark's two workloads: real text through SmolLM2-135M, and a generated video.

A workload is a loaded model plus an endless supply of chunks ("frames") of `chunk` input
embeddings, and the real KV of its first tokens so a cache of any size can be filled without
prefilling it chunk by chunk (sizes past the real prefix repeat it: latency only).

    text   SmolLM2-135M-Instruct (GGUF -> fp32 bundle, exported on first use) over the Python
           language reference shipped with the standard library; a frame = 10 text tokens.
    video  a vision graph over frames of the synthetic world (vrex_edge.world): a frame = the
           T_v vision tokens of one rendered frame (strong frame-to-frame redundancy). The model
           is VIDEO_MODEL when that bundle exists, else a tiny random videollm exported once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vrex_edge.errors import ConfigError
from vrex_edge.runtime.engine import Model, load_model, uses_cuda
from vrex_edge.runtime.retrieval import FullKV

REPO = Path(__file__).resolve().parents[2]
CACHE_DIR = REPO / ".cache"
VIDEO_MODEL = REPO / "models" / "vrex-tiny"  # the embedded model, once trained
WORKLOADS = ("text", "video")
Progress = Callable[[str], None]


def reference_text() -> str:
    """Long real English text available offline: the Python language reference topics (~465K chars)."""
    import pydoc_data.topics as topics

    return "\n\n".join(topics.topics[k] for k in sorted(topics.topics))


@dataclass
class Workload:
    name: str
    model: Model
    chunk: int  # new tokens per frame
    description: str
    frame_embeds: Callable[[int], np.ndarray]  # frame index -> [chunk, D]
    prefix_embeds: np.ndarray = field(repr=False, default_factory=lambda: np.zeros((0, 0), np.float32))  # [P, D]
    _kv: list[tuple[np.ndarray, np.ndarray]] | None = field(default=None, repr=False)  # per layer k, v [KVH, R, hd]

    @property
    def device(self) -> str:
        """Where the policies keep their KV: "cuda" when the stage graphs run on CUDA."""
        return "cuda" if uses_cuda(self.model.providers) else "cpu"

    @property
    def max_positions(self) -> int:
        return self.model.text.max_positions

    @property
    def real_tokens(self) -> int:
        return 0 if self._kv is None else self._kv[0][0].shape[1]

    def prepare(self, n: int, progress: Progress | None = None) -> None:
        """Compute the real (un-rotated) KV of the first n stream tokens with full attention."""
        if self.real_tokens >= n:
            return
        m = self.model
        caches = m.make_caches(lambda layer, text, rope: FullKV(text, rope))
        step = 256
        for s in range(0, n, step):
            if progress:
                progress(f"{self.name}: real KV {s}/{n} tokens")
            e = min(n, s + step)
            m.forward(self.stream_embeds(s, e), np.arange(s, e), caches, "prefill")
        pos = np.arange(n)
        self._kv = [(m.rope.apply(c.k.view, -pos), c.v.view.copy()) for c in caches]  # un-rotate
        m.timer.reset()

    def stream_embeds(self, start: int, stop: int) -> np.ndarray:
        """Embeddings [stop - start, D] of the stream's tokens start..stop-1 (prefix, then frames)."""
        p = self.prefix_embeds.shape[0]
        parts = [self.prefix_embeds[start:stop]] if start < p else []
        f0, f1 = max(start - p, 0) // self.chunk, -(-(stop - p) // self.chunk)
        if stop > p:
            frames = np.concatenate([self.frame_embeds(i) for i in range(f0, f1)])  # [(f1 - f0) * chunk, D]
            off = max(start - p, 0) - f0 * self.chunk
            parts.append(frames[off : off + stop - max(start, p)])
        return np.concatenate(parts).astype(np.float32)

    def kv(self, layer: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        """k, v [KVH, n, hd] un-rotated for the first n stream tokens (the real prefix repeated past it)."""
        if self._kv is None:
            raise ConfigError("workload.prepare() must run before kv()")
        k, v = self._kv[layer]
        reps = -(-n // k.shape[1])
        if reps == 1:
            return k[:, :n], v[:, :n]
        return np.concatenate([k] * reps, axis=1)[:, :n], np.concatenate([v] * reps, axis=1)[:, :n]


def smollm2_bundle(cache_dir: Path = CACHE_DIR, progress: Progress | None = None) -> Path:
    """The fp32 SmolLM2-135M bundle, downloading the GGUF and exporting it when missing."""
    bundle = cache_dir / "bundles" / "smollm2-135m"
    if not (bundle / "manifest.json").is_file():
        from vrex_edge.export import export_bundle
        from vrex_edge.testing.smollm2 import smollm2_gguf

        if progress:
            progress("exporting SmolLM2-135M (first run only)")
        export_bundle(smollm2_gguf(cache_dir / "smollm2"), bundle, force=True)
    return bundle


def tiny_video_bundle(cache_dir: Path = CACHE_DIR, progress: Progress | None = None) -> Path:
    """A tiny random vrex_videollm (stand-in until models/vrex-tiny is trained), exported once."""
    bundle = cache_dir / "bundles" / "tiny-videollm-bench"
    if not (bundle / "manifest.json").is_file():
        from vrex_edge.export import export_bundle
        from vrex_edge.testing.tiny import make_tiny_checkpoint

        if progress:
            progress("exporting a tiny random videollm (first run only)")
        ckpt = make_tiny_checkpoint(
            cache_dir / "ckpt" / "tiny-videollm-bench", seed=0, text_config={"max_position_embeddings": 65536}
        )
        export_bundle(ckpt, bundle, force=True)
    return bundle


def text_workload(
    bundle: Path | None = None,
    *,
    cache_dir: Path = CACHE_DIR,
    chunk: int = 10,
    progress: Progress | None = None,
    providers: Sequence[str] = ("cpu",),
) -> Workload:
    model = load_model(bundle or smollm2_bundle(cache_dir, progress), providers=providers)
    ids = np.asarray(model.tokenizer.encode(reference_text()), np.int64)  # [N]

    def frame(i: int) -> np.ndarray:
        s = (i * chunk) % (ids.size - chunk)  # wraps around past the corpus (~120K tokens)
        return model.embed(ids[s : s + chunk])

    desc = (
        f"{model.manifest.name}: real English text (Python language reference, {ids.size:,} tokens), "
        f"{chunk} tokens per frame"
    )
    return Workload("text", model, chunk, desc, frame)


def video_workload(
    bundle: Path | None = None,
    *,
    cache_dir: Path = CACHE_DIR,
    seed: int = 0,
    progress: Progress | None = None,
    providers: Sequence[str] = ("cpu",),
) -> Workload:
    """Frames of the synthetic world through the bundle's vision stage (VIDEO_MODEL by default)."""
    from vrex_edge.runtime.preprocess import Preprocessor
    from vrex_edge.world.render import frames as render_frames
    from vrex_edge.world.sim import FPS, simulate

    if bundle is None:
        bundle = VIDEO_MODEL if (VIDEO_MODEL / "manifest.json").is_file() else tiny_video_bundle(cache_dir, progress)
    model = load_model(bundle, providers=providers)
    if not model.has_vision or model.vision_spec is None:
        raise ConfigError(f"the video workload needs a bundle with a vision stage ({bundle} has none)")
    pre = Preprocessor(model.vision_spec)
    chunk = model.vision_spec.tokens_per_frame
    done: list[np.ndarray] = []  # [T_v, D] per rendered frame
    batch = 256

    def frame(i: int) -> np.ndarray:
        while len(done) <= i:  # render + encode the next `batch` frames of a fresh world segment
            stream = simulate(seed + len(done) // batch, batch / FPS)
            pixels = np.stack([pre(img) for img in render_frames(stream)])  # [B, 3, H, W]
            for s in range(0, pixels.shape[0], 64):
                done.extend(model.vision(pixels[s : s + 64]))
        return done[i]

    prefix = model.embed(list(model.manifest.prompt.system_ids))  # [S, D]
    desc = (
        f"{model.manifest.name}: synthetic world video (vrex_edge.world, {FPS:g} fps, seed {seed}) through its "
        f"vision stage, {chunk} tokens per frame"
    )
    return Workload("video", model, chunk, desc, frame, prefix_embeds=prefix)


def load_workload(
    name: str,
    bundle: Path | None = None,
    *,
    cache_dir: Path = CACHE_DIR,
    progress: Progress | None = None,
    providers: Sequence[str] = ("cpu",),
) -> Workload:
    """providers: the stage graphs' execution providers; on CUDA the policies keep their KV there too."""
    if name == "text":
        return text_workload(bundle, cache_dir=cache_dir, progress=progress, providers=providers)
    if name == "video":
        return video_workload(bundle, cache_dir=cache_dir, progress=progress, providers=providers)
    raise ConfigError(f"unknown workload '{name}' (choose from: {', '.join(WORKLOADS)})")
