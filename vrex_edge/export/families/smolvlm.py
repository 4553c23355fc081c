"""SmolVLM2 / Idefics3 (transformers SmolVLMForConditionalGeneration, Idefics3ForConditionalGeneration):
SigLIP -> pixel shuffle -> MLP connector -> SmolLM2 (Llama) LM.

Video frames are resized to the vision tower's square input (512 px for SmolVLM2, as its video
processor does) and give (size/patch)^2 / scale^2 tokens (64 for SmolVLM2). The processor
writes each frame as "\\nFrame from MM:SS:<fake_token_around_image><global-img>" + image
tokens + "<fake_token_around_image>": the text before the frame is the manifest's
frame_prefix_template (tokenized per frame with its stream time); the closing wrapper token's
embedding is the vision stage's last row, so tokens_per_frame = image tokens + 1.
"""

from __future__ import annotations

from typing import Any

from vrex_edge.bundle import PromptSpec, TokenSpec, VisionSpec
from vrex_edge.errors import ExportError
from vrex_edge.export.registry import Family, LoadedModel, Source, register

FAKE, GLOBAL, IMAGE = "<fake_token_around_image>", "<global-img>", "<image>"
END = "<end_of_utterance>"
# The processor's video intro, "...series of {frame_count} frames from a {video_duration} [H:MM:SS] video.\n",
# names the frame count (in words) and the duration; it is prefilled before the first frame, when a stream
# knows neither and a file only its container's estimate (docs/families.md), so the bundle leaves them out.
INTRO = "You are provided the following series of frames from a video.\n"
FRAME_PREFIX = "\nFrame from {mm:02d}:{ss:02d}:" + FAKE + GLOBAL


def encode_frames(model: Any, close_row: Any, pixel_values: Any) -> Any:
    """pixel_values [F, 3, S, S] -> [F, S^2/p^2/scale^2 + 1, D]: connector output, then the
    closing <fake_token_around_image> embedding."""
    import torch

    vm = model.model.vision_model
    # a full-size frame: every patch is valid, so positions are 0..P-1 and no attention mask is needed
    # (transformers' variable-resolution position bucketing does not export to ONNX)
    x = vm.embeddings.patch_embedding(pixel_values).flatten(2).transpose(1, 2)  # [F, P, C]
    x = x + vm.embeddings.position_embedding.weight[None]  # [F, P, C]
    hidden = vm.post_layernorm(vm.encoder(inputs_embeds=x).last_hidden_state)  # [F, P, C]
    feats = model.model.connector(hidden)  # [F, T, D]
    close = close_row[None, None, :].expand(feats.shape[0], 1, feats.shape[2])  # [F, 1, D]
    return torch.cat([feats, close], dim=1)  # [F, T + 1, D]


def load(source: Source) -> LoadedModel:
    from vrex_edge.export.stages import VisionStage
    from vrex_edge.export.vlm import causal_lm_view, image_norm, load_hf_vlm, text_ids, token_id

    if source.kind != "hf":
        raise ExportError(f"{source.path}: a SmolVLM2 model is a Hugging Face folder")
    model, tok, weights = load_hf_vlm(source)
    cfg = model.config
    if cfg.text_config.model_type not in ("llama", "smollm2"):
        raise ExportError(f"SmolVLM text model '{cfg.text_config.model_type}' is not a Llama layout")
    lm = causal_lm_view(cfg.text_config, model.model.text_model, model.lm_head)
    fake = token_id(tok, FAKE, what="image wrapper")
    token_id(tok, GLOBAL, what="global image")
    end = token_id(tok, END, what="end of utterance")
    close_row = weights.load_rows(model.model.text_model.embed_tokens, "weight", fake, fake + 1)[0]  # [D]
    stage = VisionStage(model.model.vision_model, lambda px: encode_frames(model, close_row, px))
    stage.connector = model.model.connector
    vc = cfg.vision_config
    size = int(vc.image_size)
    per_frame = (size // int(vc.patch_size)) ** 2 // int(cfg.scale_factor) ** 2
    mean, std = image_norm(source.path)
    system_text = "<|im_start|>User: " + INTRO
    prompt = PromptSpec(
        system_ids=text_ids(tok, system_text),
        user_prefix_ids=text_ids(tok, "\n\n"),
        user_suffix_ids=text_ids(tok, END + "\n"),
        reply_prefix_ids=text_ids(tok, "Assistant:"),
        reply_suffix_ids=text_ids(tok, END + "\n<|im_start|>User:"),
        frame_prefix_template=FRAME_PREFIX,
        system_text=system_text,
    )
    tokens = TokenSpec(
        bos=tok.bos_token_id,
        end_of_turn=(end,),
        frame_placeholder=token_id(tok, IMAGE, what="image"),
        pad=tok.pad_token_id,
    )
    vision_spec = VisionSpec(
        image_size=(size, size),
        mean=mean,
        std=std,  # type: ignore[arg-type]
        tokens_per_frame=per_frame + 1,
        resize="stretch",
    )
    notes = {
        "architecture": f"{type(model).__name__} (SigLIP + pixel shuffle x{cfg.scale_factor} + MLP + Llama)",
        "image_tokens_per_frame": per_frame,
        "prompt_layout": "<|im_start|>User: {intro} (\\nFrame from MM:SS:<fake><global-img><image>*T<fake>)* "
        "\\n\\n{q}<end_of_utterance>\\nAssistant: {a}<end_of_utterance>\\n<|im_start|>User: ...",
        "speaks": "no frame-interval token: SmolVLM2 answers questions; it does not decide when to speak",
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


FAMILY = register(Family("smolvlm", ("smolvlm", "idefics3", "smolvlm2"), load))
