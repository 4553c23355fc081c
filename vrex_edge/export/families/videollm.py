"""The "vrex_videollm" checkpoint (vrex_edge.export.modeling): SigLIP vision tower, CLS + 3x3
pooled tokens per frame, 2-layer MLP connector, Llama LM."""

from __future__ import annotations

import dataclasses

from vrex_edge.bundle import PromptSpec, TokenSpec, VisionSpec
from vrex_edge.errors import ExportError
from vrex_edge.export.registry import Family, LoadedModel, Source, first_line, register

_PROMPT_FIELDS = {f.name for f in dataclasses.fields(PromptSpec)}


def load(source: Source) -> LoadedModel:
    from vrex_edge.export.modeling import load_checkpoint
    from vrex_edge.export.stages import VisionStage

    tok_file = source.path / "tokenizer.json"
    if not tok_file.is_file():
        raise ExportError(f"{source.path} has no tokenizer.json; a vrex_videollm checkpoint needs one")
    try:
        model = load_checkpoint(source.path)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ExportError(f"cannot load the vrex_videollm checkpoint in {source.path}: {first_line(e)}") from None
    cfg = model.config
    t = cfg.tokens
    if "end_of_turn" not in t:
        raise ExportError(f"{source.path}/config.json: tokens.end_of_turn is missing")
    tokens = TokenSpec(
        bos=t.get("bos"),
        end_of_turn=tuple(int(x) for x in t["end_of_turn"]),
        frame_placeholder=t.get("frame_placeholder"),
        frame_interval=t.get("frame_interval"),
        pad=t.get("pad"),
    )
    p = {k: v for k, v in cfg.prompt.items() if k in _PROMPT_FIELDS}
    prompt = PromptSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in p.items()})
    f = cfg.frame
    vision_spec = VisionSpec(
        image_size=(int(f.image_size[0]), int(f.image_size[1])),
        mean=tuple(f.mean),
        std=tuple(f.std),  # type: ignore[arg-type]
        tokens_per_frame=f.tokens_per_frame,
        resize=f.resize,
    )
    return LoadedModel(
        lm=model.language_model,
        tokenizer_json=tok_file.read_text(encoding="utf-8"),
        tokens=tokens,
        prompt=prompt,
        name=source.path.name,
        vision=VisionStage(model, model.encode_frames).eval(),
        vision_spec=vision_spec,
        notes={"architecture": "VideoLLM (SigLIP + MLP connector + Llama)"},
    )


FAMILY = register(Family("videollm", ("vrex_videollm",), load))
