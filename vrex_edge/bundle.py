"""The bundle format: a folder with manifest.json, one ONNX graph per stage, and a tokenizer.

The manifest is the only description of a bundle; nothing is guessed from file names.
`load_manifest` builds frozen dataclasses from it and validates every field, raising
`BundleError` with a message that says what is wrong.

Stage I/O contract (batch-free: the runtime streams one sequence):
    vision  pixel_values [F, 3, H, W] f32      -> frame_embeds [F, T_v, D] f32
    embed   input_ids [n] i64                  -> embeds [n, D] f32
    pre_l   hidden [n, D] f32                  -> q [H, n, hd], k [KVH, n, hd], v [KVH, n, hd]
                                                  (q, k before RoPE; the host rotates them)
    post_l  hidden [n, D], attn [n, H*hd] f32  -> hidden_out [n, D] f32
    head    hidden [n, D] f32                  -> logits [n, V] f32
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import string
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vrex_edge.errors import BundleError
from vrex_edge.hashcache import HashCache

FORMAT = "vrex-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
DTYPES = ("float32", "float16", "int64", "int32", "uint8")


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str
    shape: tuple[int | str, ...]  # ints are fixed, strings name dynamic axes


@dataclass(frozen=True)
class StageSpec:
    file: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


@dataclass(frozen=True)
class LayerStages:
    pre: StageSpec
    post: StageSpec


@dataclass(frozen=True)
class Stages:
    embed: StageSpec
    layers: tuple[LayerStages, ...]
    head: StageSpec
    vision: StageSpec | None = None
    extra: dict[str, StageSpec] = field(default_factory=dict)  # later stages (e.g. prefetch)


@dataclass(frozen=True)
class RopeSpec:
    theta: float
    inv_freq: tuple[float, ...]  # [head_dim // 2], scaling already applied
    attention_scaling: float = 1.0  # multiplies cos and sin (HF "attention_factor")
    scaling_type: str | None = None


@dataclass(frozen=True)
class TextSpec:
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    max_positions: int  # trained context length
    rms_norm_eps: float
    rope: RopeSpec


@dataclass(frozen=True)
class VisionSpec:
    image_size: tuple[int, int]  # (height, width) fed to the vision stage
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    tokens_per_frame: int
    resize: str = "pad"  # "pad": keep aspect ratio, pad with pad_color; "stretch"
    rescale: float = 1.0 / 255.0  # applied to uint8 RGB before mean/std
    # What "pad" fills with: "mean" (the normalisation mean, 0 once normalised; older bundles) or an
    # RGB triple of 0-255 integers, for models trained on frames padded with a fixed colour.
    pad_color: str | tuple[int, int, int] = "mean"


@dataclass(frozen=True)
class TokenSpec:
    bos: int | None
    end_of_turn: tuple[int, ...]  # generation stops at any of these
    frame_placeholder: int | None = None
    frame_interval: int | None = None
    pad: int | None = None


@dataclass(frozen=True)
class PromptSpec:
    """Token layout of a stream (see README "How it works").

    system, then per frame: [frame_interval if the previous item was a silent frame]
    + frame tokens. After a frame, P(frame_interval) >= speak_threshold means silence;
    otherwise reply_prefix is appended and a reply is generated until end_of_turn.
    A question appends user_prefix + question + user_suffix + reply_prefix, then the answer; or,
    when question_template is set, that template with {question} filled in, tokenized as one text.
    """

    system_ids: tuple[int, ...]
    user_prefix_ids: tuple[int, ...]
    user_suffix_ids: tuple[int, ...]
    reply_prefix_ids: tuple[int, ...]
    reply_suffix_ids: tuple[int, ...] = ()
    frame_prefix_ids: tuple[int, ...] = ()
    # Text put before each frame's tokens, after frame_prefix_ids, formatted per frame with the
    # frame's stream time: {mm}, {ss} (int minutes and seconds within the minute), {t} (float s).
    # Tokenized by the runtime per frame; "" (older bundles) means none.
    frame_prefix_template: str = ""
    speak_threshold: float = 0.5
    max_reply_tokens: int = 48
    system_text: str = ""
    # The whole text a question adds, "{question}" standing for it (literal braces doubled), for a
    # model whose reply prefix after a question differs from the one after a frame. Tokenized as one
    # text, so tokens merge across the question's edges as in the original; "" (older bundles) means
    # user_prefix + question + user_suffix + reply_prefix.
    question_template: str = ""


@dataclass(frozen=True)
class Manifest:
    name: str
    family: str
    dtype: str
    text: TextSpec
    tokens: TokenSpec
    prompt: PromptSpec
    stages: Stages
    tokenizer: str
    files: dict[str, str]  # relative path -> sha256
    vision: VisionSpec | None = None
    source: str = ""
    notes: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION


# ---------------------------------------------------------------------------- reading


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _req(d: dict[str, Any], key: str, where: str) -> Any:
    if not isinstance(d, dict) or key not in d:
        raise BundleError(f"manifest: missing field '{where}{key}'")
    return d[key]


def _tensor(d: dict[str, Any], where: str) -> TensorSpec:
    name, dtype, shape = _req(d, "name", where), _req(d, "dtype", where), _req(d, "shape", where)
    if dtype not in DTYPES:
        raise BundleError(f"manifest: {where}{name} has unknown dtype '{dtype}'")
    return TensorSpec(str(name), str(dtype), tuple(shape))


def _stage(d: dict[str, Any], where: str) -> StageSpec:
    if not isinstance(d, dict):
        raise BundleError(f"manifest: stage '{where}' must be an object")
    return StageSpec(
        file=str(_req(d, "file", where + ".")),
        inputs=tuple(_tensor(t, f"{where}.inputs.") for t in _req(d, "inputs", where + ".")),
        outputs=tuple(_tensor(t, f"{where}.outputs.") for t in _req(d, "outputs", where + ".")),
    )


def _ids(v: Any) -> tuple[int, ...]:
    return tuple(int(x) for x in (v or ()))


def _pad_color(v: Any) -> Any:
    """A JSON list becomes a tuple (so the spec stays hashable); _check_vision validates the value."""
    return tuple(v) if isinstance(v, list) else v


def manifest_from_dict(m: dict[str, Any]) -> Manifest:
    """Build a Manifest from parsed JSON, checking structure (not files)."""
    if m.get("format") != FORMAT:
        raise BundleError(f"manifest: not a vrex bundle (format is {m.get('format')!r})")
    version = m.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(
            f"manifest: unknown format_version {version!r} (this vrex-edge reads {FORMAT_VERSION}); "
            "re-export the model with this version"
        )
    try:
        t = _req(m, "text", "")
        r = _req(t, "rope", "text.")
        rope = RopeSpec(
            theta=float(_req(r, "theta", "text.rope.")),
            inv_freq=tuple(float(x) for x in _req(r, "inv_freq", "text.rope.")),
            attention_scaling=float(r.get("attention_scaling", 1.0)),
            scaling_type=r.get("scaling_type"),
        )
        text = TextSpec(
            num_layers=int(_req(t, "num_layers", "text.")),
            hidden_size=int(_req(t, "hidden_size", "text.")),
            num_heads=int(_req(t, "num_heads", "text.")),
            num_kv_heads=int(_req(t, "num_kv_heads", "text.")),
            head_dim=int(_req(t, "head_dim", "text.")),
            vocab_size=int(_req(t, "vocab_size", "text.")),
            max_positions=int(_req(t, "max_positions", "text.")),
            rms_norm_eps=float(_req(t, "rms_norm_eps", "text.")),
            rope=rope,
        )
        tk = _req(m, "tokens", "")
        tokens = TokenSpec(
            bos=tk.get("bos"),
            end_of_turn=_ids(_req(tk, "end_of_turn", "tokens.")),
            frame_placeholder=tk.get("frame_placeholder"),
            frame_interval=tk.get("frame_interval"),
            pad=tk.get("pad"),
        )
        p = _req(m, "prompt", "")
        prompt = PromptSpec(
            system_ids=_ids(p.get("system_ids")),
            user_prefix_ids=_ids(p.get("user_prefix_ids")),
            user_suffix_ids=_ids(p.get("user_suffix_ids")),
            reply_prefix_ids=_ids(p.get("reply_prefix_ids")),
            reply_suffix_ids=_ids(p.get("reply_suffix_ids")),
            frame_prefix_ids=_ids(p.get("frame_prefix_ids")),
            frame_prefix_template=str(p.get("frame_prefix_template", "")),
            speak_threshold=float(p.get("speak_threshold", 0.5)),
            max_reply_tokens=int(p.get("max_reply_tokens", 48)),
            system_text=str(p.get("system_text", "")),
            question_template=str(p.get("question_template", "")),
        )
        vision = None
        if m.get("vision") is not None:
            v = m["vision"]
            vision = VisionSpec(
                image_size=tuple(int(x) for x in _req(v, "image_size", "vision.")),  # type: ignore[arg-type]
                mean=tuple(float(x) for x in _req(v, "mean", "vision.")),  # type: ignore[arg-type]
                std=tuple(float(x) for x in _req(v, "std", "vision.")),  # type: ignore[arg-type]
                tokens_per_frame=int(_req(v, "tokens_per_frame", "vision.")),
                resize=str(v.get("resize", "pad")),
                rescale=float(v.get("rescale", 1.0 / 255.0)),
                pad_color=_pad_color(v.get("pad_color", "mean")),
            )
        s = _req(m, "stages", "")
        layers = tuple(
            LayerStages(
                pre=_stage(_req(ls, "pre", f"stages.layers[{i}]."), f"layers[{i}].pre"),
                post=_stage(_req(ls, "post", f"stages.layers[{i}]."), f"layers[{i}].post"),
            )
            for i, ls in enumerate(_req(s, "layers", "stages."))
        )
        stages = Stages(
            embed=_stage(_req(s, "embed", "stages."), "embed"),
            layers=layers,
            head=_stage(_req(s, "head", "stages."), "head"),
            vision=_stage(s["vision"], "vision") if s.get("vision") is not None else None,
            extra={k: _stage(v, k) for k, v in (s.get("extra") or {}).items()},
        )
        manifest = Manifest(
            name=str(_req(m, "name", "")),
            family=str(_req(m, "family", "")),
            dtype=str(_req(m, "dtype", "")),
            text=text,
            tokens=tokens,
            prompt=prompt,
            stages=stages,
            tokenizer=str(_req(m, "tokenizer", "")),
            files={str(k): str(v) for k, v in _req(m, "files", "").items()},
            vision=vision,
            source=str(m.get("source", "")),
            notes=dict(m.get("notes") or {}),
            format_version=version,
        )
    except (TypeError, ValueError, AttributeError) as e:
        raise BundleError(f"manifest: malformed field ({e})") from None
    _check_consistency(manifest)
    return manifest


def _check_consistency(m: Manifest) -> None:
    t = m.text
    for key in ("num_layers", "hidden_size", "num_heads", "num_kv_heads", "head_dim", "vocab_size", "max_positions"):
        if getattr(t, key) < 1:
            raise BundleError(f"manifest: text.{key} must be a positive integer, got {getattr(t, key)}")
    if m.vision is not None:
        _check_vision(m.vision)
    _check_question_template(m.prompt.question_template)
    if len(m.stages.layers) != t.num_layers:
        raise BundleError(f"manifest: {len(m.stages.layers)} layer stages for {t.num_layers} layers")
    if t.num_heads % t.num_kv_heads:
        raise BundleError(f"manifest: num_heads {t.num_heads} is not a multiple of num_kv_heads {t.num_kv_heads}")
    if len(t.rope.inv_freq) * 2 != t.head_dim:
        raise BundleError(f"manifest: rope.inv_freq has {len(t.rope.inv_freq)} entries for head_dim {t.head_dim}")
    if (m.vision is None) != (m.stages.vision is None):
        raise BundleError("manifest: 'vision' and 'stages.vision' must be given together")
    if not m.tokens.end_of_turn:
        raise BundleError("manifest: tokens.end_of_turn is empty")
    for stage_file in stage_files(m):
        if stage_file not in m.files:
            raise BundleError(f"manifest: stage file '{stage_file}' has no sha256 in 'files'")
    if m.tokenizer not in m.files:
        raise BundleError(f"manifest: tokenizer '{m.tokenizer}' has no sha256 in 'files'")


def _check_vision(v: VisionSpec) -> None:
    if len(v.image_size) != 2 or min(v.image_size) < 1:
        raise BundleError(
            f"manifest: vision.image_size must be [height, width] of positive integers, got {list(v.image_size)}"
        )
    if len(v.mean) != 3 or len(v.std) != 3 or not all(math.isfinite(x) for x in v.mean + v.std) or min(v.std) <= 0:
        raise BundleError(
            f"manifest: vision.mean and vision.std must be 3 finite numbers, std > 0 "
            f"(got {list(v.mean)} and {list(v.std)})"
        )
    if v.tokens_per_frame < 1:
        raise BundleError(f"manifest: vision.tokens_per_frame must be >= 1, got {v.tokens_per_frame}")
    if v.resize not in ("pad", "stretch"):
        raise BundleError(f"manifest: vision.resize must be 'pad' or 'stretch', got {v.resize!r}")
    if not (math.isfinite(v.rescale) and v.rescale > 0):
        raise BundleError(f"manifest: vision.rescale must be a positive number, got {v.rescale}")
    if v.pad_color != "mean" and not _is_rgb(v.pad_color):
        shown = list(v.pad_color) if isinstance(v.pad_color, tuple) else v.pad_color
        raise BundleError(f"manifest: vision.pad_color must be 'mean' or [r, g, b] integers 0-255, got {shown!r}")


def _is_rgb(c: Any) -> bool:
    return isinstance(c, tuple) and len(c) == 3 and all(type(x) is int and 0 <= x <= 255 for x in c)


def _check_question_template(template: str) -> None:
    """The runtime fills a question template with str.format, so it must name {question} and nothing else."""
    if not template:
        return
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as e:
        raise BundleError(f"manifest: prompt.question_template is not a valid template ({e}): {template!r}") from None
    if fields != {"question"}:
        raise BundleError(
            f"manifest: prompt.question_template must contain {{question}} and no other field "
            f"(double literal braces), got {template!r}"
        )


def stage_files(m: Manifest) -> list[str]:
    s = m.stages
    out = [s.embed.file, s.head.file] + [f for ls in s.layers for f in (ls.pre.file, ls.post.file)]
    out += [st.file for st in s.extra.values()]
    if s.vision is not None:
        out.append(s.vision.file)
    return out


def _inside(root: Path, rel: str) -> Path:
    """Resolve `rel` under `root`, refusing absolute paths and anything escaping the bundle."""
    if os.path.isabs(rel) or "\\" in rel:
        raise BundleError(f"bundle: path '{rel}' must be relative to the bundle folder")
    path = (root / rel).resolve()
    if root.resolve() not in path.parents:
        raise BundleError(f"bundle: path '{rel}' escapes the bundle folder")
    return path


def load_manifest(bundle: str | os.PathLike[str], *, verify_hashes: bool = True, full_verify: bool = False) -> Manifest:
    """Read and validate `bundle/manifest.json` and the files it names.

    verify_hashes: check every file's sha256; a file verified before and unchanged since (size,
    mtime, ctime, inode) is not hashed again (see hashcache.py) unless full_verify."""
    root = Path(bundle)
    if not root.exists():
        raise BundleError(f"bundle not found: {root}")
    if not root.is_dir():
        raise BundleError(f"bundle must be a folder with {MANIFEST}: {root}")
    mpath = root / MANIFEST
    if not mpath.is_file():
        raise BundleError(f"bundle has no {MANIFEST}: {root}")
    try:
        raw = json.loads(mpath.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"cannot read {mpath}: {e}") from None
    if not isinstance(raw, dict):
        raise BundleError(f"{mpath} must hold a JSON object")
    manifest = manifest_from_dict(raw)
    cache = HashCache() if verify_hashes else None
    for rel, digest in manifest.files.items():
        path = _inside(root, rel)
        if not path.is_file():
            raise BundleError(f"bundle file missing: {rel} (in {root})")
        if cache is None or (not full_verify and cache.verified(path, digest)):
            continue
        if sha256_file(path) != digest:
            raise BundleError(f"bundle file {rel} does not match its sha256 in {MANIFEST} (corrupt or edited)")
        cache.record(path, digest)
    if cache is not None:
        cache.save()
    return manifest


def bundle_path(root: str | os.PathLike[str], rel: str) -> Path:
    return _inside(Path(root), rel)


# ---------------------------------------------------------------------------- writing


def manifest_to_dict(m: Manifest) -> dict[str, Any]:
    d = asdict(m)
    d = {"format": FORMAT, **d}
    return _jsonable(d)


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


def write_manifest(root: Path, m: Manifest) -> None:
    (root / MANIFEST).write_text(json.dumps(manifest_to_dict(m), indent=1) + "\n", encoding="utf-8")
