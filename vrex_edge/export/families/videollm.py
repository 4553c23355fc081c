"""The "vrex_videollm" checkpoint (vrex_edge.export.modeling): SigLIP vision tower, CLS + 3x3
pooled tokens per frame, 2-layer MLP connector, Llama LM."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from vrex_edge.bundle import PromptSpec, TokenSpec, VisionSpec
from vrex_edge.errors import ExportError
from vrex_edge.export.registry import Family, LoadedModel, Source, first_line, register

SPECIALS = ["<pad>", "<bos>", "<unk>", "<v>", "<int>", "<user>", "<asst>", "<eot>"]
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
        bos=t.get("bos"), end_of_turn=tuple(int(x) for x in t["end_of_turn"]),
        frame_placeholder=t.get("frame_placeholder"), frame_interval=t.get("frame_interval"), pad=t.get("pad"),
    )
    p = {k: v for k, v in cfg.prompt.items() if k in _PROMPT_FIELDS}
    prompt = PromptSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in p.items()})
    f = cfg.frame
    vision_spec = VisionSpec(
        image_size=(int(f.image_size[0]), int(f.image_size[1])), mean=tuple(f.mean), std=tuple(f.std),  # type: ignore[arg-type]
        tokens_per_frame=f.tokens_per_frame, resize=f.resize,
    )
    return LoadedModel(
        lm=model.language_model, tokenizer_json=tok_file.read_text(encoding="utf-8"), tokens=tokens, prompt=prompt,
        name=source.path.name, vision=VisionStage(model, model.encode_frames).eval(), vision_spec=vision_spec,
        notes={"architecture": "VideoLLM (SigLIP + MLP connector + Llama)"},
    )


FAMILY = register(Family("videollm", ("vrex_videollm",), load))


def make_tiny_checkpoint(
    path: str | Path,
    *,
    seed: int = 0,
    image_size: int = 48,
    patch_size: int = 8,
    vision_hidden: int = 64,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    speak_threshold: float = 0.5,
    text_config: dict[str, Any] | None = None,
) -> Path:
    """Write a tiny random vrex_videollm checkpoint (config.json, model.safetensors, tokenizer.json)."""
    import torch

    from vrex_edge.export.modeling import FrameConfig, VideoLLM, VideoLLMConfig, save_checkpoint
    from vrex_edge.export.tiny import word_tokenizer

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tok = word_tokenizer(SPECIALS)
    ids = {s: tok.token_to_id(s) for s in SPECIALS}
    vision_config = dict(hidden_size=vision_hidden, intermediate_size=2 * vision_hidden, num_hidden_layers=2,
                         num_attention_heads=4, image_size=image_size, patch_size=patch_size, num_channels=3)
    tc = dict(vocab_size=tok.get_vocab_size(), hidden_size=hidden, intermediate_size=2 * hidden,
              num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
              max_position_embeddings=4096, rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
              bos_token_id=ids["<bos>"], eos_token_id=ids["<eot>"], pad_token_id=ids["<pad>"])
    tc.update(text_config or {})
    system_text = "you are watching a video stream ."
    config = VideoLLMConfig(
        vision_config=vision_config, text_config=tc,
        frame=FrameConfig(image_size=(image_size, image_size), pooled_grid=(3, 3), use_cls=True),
        tokens={"bos": ids["<bos>"], "frame_placeholder": ids["<v>"], "frame_interval": ids["<int>"],
                "end_of_turn": [ids["<eot>"]], "pad": ids["<pad>"]},
        prompt={"system_ids": [ids["<bos>"], *tok.encode(system_text, add_special_tokens=False).ids],
                "user_prefix_ids": [ids["<user>"]], "user_suffix_ids": [], "reply_prefix_ids": [ids["<asst>"]],
                "reply_suffix_ids": [ids["<eot>"]], "speak_threshold": speak_threshold, "system_text": system_text,
                "frame_placeholder": ids["<v>"], "frame_interval": ids["<int>"], "end_of_turn": [ids["<eot>"]]},
    )
    torch.manual_seed(seed)
    model = VideoLLM(config).eval()
    tok_file = path / "tokenizer.json"
    tok.save(str(tok_file))
    save_checkpoint(model, path)
    return path
