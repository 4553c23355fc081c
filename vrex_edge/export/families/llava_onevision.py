"""LLaVA-OneVision (transformers LlavaOnevisionForConditionalGeneration), video path:
SigLIP -> 2-layer MLP projector -> 2x bilinear pooling of the patch grid -> Qwen2 LM.

A video frame gives ceil(g/2)^2 tokens (196 for 384 px, patch 14). transformers appends one
`image_newline` embedding after the last frame of a clip; a stream has no last frame, so the
vision stage appends it after every frame (tokens_per_frame = pooled tokens + 1).
"""

from __future__ import annotations

import math
from typing import Any

from vrex_edge.bundle import PromptSpec, TokenSpec, VisionSpec
from vrex_edge.errors import ExportError
from vrex_edge.export.registry import Family, LoadedModel, Source, register

SYSTEM = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"


def encode_frames(model: Any, newline: Any, pixel_values: Any, *, grid: int) -> Any:
    """pixel_values [F, 3, S, S] -> [F, ceil(grid/2)^2 + 1, D] (pooled projected features, newline)."""
    import torch
    import torch.nn.functional as F

    m, cfg = model.model, model.config
    out = m.vision_tower(pixel_values, output_hidden_states=True)
    layer = cfg.vision_feature_layer
    layers = [layer] if isinstance(layer, int) else list(layer)
    feats = torch.cat([out.hidden_states[i] for i in layers], dim=-1)  # [F, P, C]
    if cfg.vision_feature_select_strategy == "default":
        feats = feats[:, 1:]
    x = m.multi_modal_projector(feats)  # [F, g*g, D]
    d = x.shape[-1]
    x = x.reshape(-1, grid, grid, d).permute(0, 3, 1, 2)  # [F, D, g, g]
    half = math.ceil(grid / 2)
    x = F.interpolate(x, size=[half, half], mode="bilinear").permute(0, 2, 3, 1).reshape(-1, half * half, d)
    nl = newline[None, None, :].expand(x.shape[0], 1, d)  # [F, 1, D]
    return torch.cat([x, nl.to(x.dtype)], dim=1)  # [F, half^2 + 1, D]


def load(source: Source) -> LoadedModel:
    from vrex_edge.export.stages import VisionStage
    from vrex_edge.export.vlm import causal_lm_view, image_norm, load_hf_vlm, text_ids, token_id

    if source.kind != "hf":
        raise ExportError(f"{source.path}: a LLaVA-OneVision model is a Hugging Face folder")
    model, tok, weights = load_hf_vlm(source)
    cfg = model.config
    if cfg.text_config.model_type not in ("qwen2", "llama"):
        raise ExportError(f"LLaVA-OneVision text model '{cfg.text_config.model_type}' is not a Qwen2/Llama layout")
    if cfg.vision_feature_select_strategy not in ("default", "full"):
        raise ExportError(f"unknown vision_feature_select_strategy '{cfg.vision_feature_select_strategy}'")
    lm = causal_lm_view(cfg.text_config, model.model.language_model, model.lm_head)
    vc = cfg.vision_config
    size, grid = int(vc.image_size), int(vc.image_size) // int(vc.patch_size)
    newline = weights.load(model.model, "image_newline").clone()  # [D]
    stage = VisionStage(model.model.vision_tower, lambda px: encode_frames(model, newline, px, grid=grid))
    stage.projector = model.model.multi_modal_projector
    end = token_id(tok, "<|im_end|>", what="end of turn")
    mean, std = image_norm(source.path)
    prompt = PromptSpec(
        system_ids=text_ids(tok, SYSTEM),
        user_prefix_ids=text_ids(tok, "\n"),
        user_suffix_ids=text_ids(tok, "<|im_end|>\n"),
        reply_prefix_ids=text_ids(tok, "<|im_start|>assistant\n"),
        reply_suffix_ids=text_ids(tok, "<|im_end|>\n<|im_start|>user\n"),
        system_text=SYSTEM,
    )
    video = getattr(cfg, "video_token_id", None) or getattr(cfg, "video_token_index", None)
    tokens = TokenSpec(bos=tok.bos_token_id, end_of_turn=(end,), frame_placeholder=video, pad=tok.pad_token_id)
    half = math.ceil(grid / 2)
    vision_spec = VisionSpec(
        image_size=(size, size),
        mean=mean,
        std=std,  # type: ignore[arg-type]
        tokens_per_frame=half * half + 1,
        resize="stretch",
    )
    notes = {
        "architecture": "LlavaOnevisionForConditionalGeneration (SigLIP + MLP + 2x bilinear pooling + Qwen2)",
        "video_tokens_per_frame": half * half,
        "image_newline": "appended after every frame (transformers: once after a clip's last frame)",
        "prompt_layout": "<|im_start|>system\\n...<|im_end|>\\n<|im_start|>user\\n (frame)* \\n{q}<|im_end|>\\n"
        "<|im_start|>assistant\\n{a}<|im_end|>\\n<|im_start|>user\\n ...",
        "speaks": "no frame-interval token: LLaVA-OneVision answers questions; it does not decide when to speak",
    }
    return LoadedModel(
        lm=lm,
        tokenizer_json=tok.backend_tokenizer.to_str(),
        tokens=tokens,
        prompt=prompt,
        name=source.path.name,
        vision=stage.eval(),
        vision_spec=vision_spec,
        notes=notes,
        weights=weights,
    )


FAMILY = register(Family("llava-onevision", ("llava_onevision",), load))
