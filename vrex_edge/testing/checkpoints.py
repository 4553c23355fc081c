"""Real-size checkpoint fixtures: the published configuration files of each family with random weights.

    write_fixture("smolvlm2-256m", root)       -> root/smolvlm2-256m (the folder `vrex-edge export` takes)
    write_fixture("videollm-online-8b", root)  -> root/videollm-online-8b/adapter (+ llama/, siglip/ beside it)

Every file a family reads is written as the Hub publishes it: config.json, the image/video
processor configs, the tokenizer (its special tokens at their published ids, its chat template,
the published vocabulary size) and safetensors weights in the published dtype, sharded like the
Hub's (`model-0000k-of-0000n.safetensors` + index). Weights are random (N(0, 0.02); norm scales
1 + N(0, 0.02)) and written one shard at a time. `layers=` truncates the LM to that many decoder
layers (every other dimension stays real), for layer-limited runs on small machines.

Where the values come from: no Hub access was possible when this was written, so the values are
from the published files as remembered by the author, checked against transformers' own config
classes (the architecture fields must build the published parameter counts: 256M, 500M, 2.2B,
0.9B, 8B + 0.4B). Lines marked "(unverified)" are details that could not be cross-checked and do
not change any shape or token id the exporter uses. The tokenizers' vocabularies are synthetic
(byte-level BPE with invented merges); their sizes, special tokens, ids and chat templates are the
published ones.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vrex_edge.testing.weights import (
    hf_checkpoint_names,
    save_tokenizer,
    synthetic_tokenizer,
    tensor_specs,
    write_json,
    write_shards,
)

# Words that prompts and tests use, so they are single tokens as in a real vocabulary.
_WORDS = (
    "User",
    "Assistant",
    ":",
    " what",
    " is",
    " the",
    " person",
    " doing",
    " now",
    " ?",
    "what",
    "Frame",
    " from",
    "You",
    " are",
    " provided",
    " following",
    " series",
    " of",
    " frames",
    " a",
    " video",
    ".",
    "\n",
    "\n\n",
    "]\n",
    "\n[",
    ",",
    "system",
    "user",
    "assistant",
    " helpful",
    " A",
    " multimodal",
    " AI",
)
_RESCALE = 0.00392156862745098  # 1/255, every processor's rescale_factor


@dataclass(frozen=True)
class FixtureSpec:
    name: str  # fixture name ("smolvlm2-256m")
    hub_id: str  # the published model it reproduces
    params: str  # published parameter count, for the docs
    write: Callable[..., Path]  # (folder, *, layers, seed, progress) -> the export source


# ---------------------------------------------------------------------------------------------- SmolVLM2

# HuggingFaceTB/SmolVLM2-*: SmolLM2 tokenizer (49152 BPE tokens, ids 0-16 special) + the Idefics3 /
# SmolVLM added tokens: <global-img> 49152, <row_r_col_c> 49153-49188 (6 x 6), <fake_token_around_image>
# 49189, <image> 49190 (= config.json image_token_id), <end_of_utterance> 49279 (the vocab padding to 49280
# lies between: its names are synthetic here).
_SMOLLM2_SPECIALS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<repo_name>",
    "<reponame>",
    "<file_sep>",
    "<filename>",
    "<gh_stars>",
    "<issue_start>",
    "<issue_comment>",
    "<issue_closed>",
    "<jupyter_start>",
    "<jupyter_text>",
    "<jupyter_code>",
    "<jupyter_output>",
    "<jupyter_script>",
    "<empty_output>",
]
# tokenizer_config.json chat_template of SmolVLM2 (images and videos as content items; text otherwise)
SMOLVLM2_CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)


def _smolvlm_specials() -> dict[int, str]:
    sp = dict(enumerate(_SMOLLM2_SPECIALS))
    sp[49152] = "<global-img>"
    for r in range(6):
        for c in range(6):
            sp[49153 + 6 * r + c] = f"<row_{r + 1}_col_{c + 1}>"
    sp[49189], sp[49190] = "<fake_token_around_image>", "<image>"
    for i in range(49191, 49279):
        sp[i] = f"<|reserved_vlm_token_{i - 49191}|>"  # (unverified) padding names
    sp[49279] = "<end_of_utterance>"
    return sp


def _smolvlm_config(text: dict[str, Any], vision: dict[str, Any], scale: int) -> dict[str, Any]:
    return {
        "architectures": ["SmolVLMForConditionalGeneration"],
        "image_token_id": 49190,
        "model_type": "smolvlm",
        "scale_factor": scale,
        "text_config": {
            "architectures": ["VLlama3ForCausalLM"],
            "attention_bias": False,
            "attention_dropout": 0.0,
            "hidden_act": "silu",
            "mlp_bias": False,
            "model_type": "llama",
            "pad_token_id": 2,
            "pretraining_tp": 1,
            "rms_norm_eps": 1e-05,
            "rope_scaling": None,
            "tie_word_embeddings": False,
            "use_cache": True,
            "vocab_size": 49280,
            **text,
        },
        "tie_word_embeddings": False,
        "use_cache": True,
        "vision_config": {
            "model_type": "smolvlm_vision",
            "num_channels": 3,
            "hidden_act": "gelu_pytorch_tanh",
            "layer_norm_eps": 1e-06,
            "tie_word_embeddings": False,
            **vision,
        },
        "vocab_size": 49280,
    }


# SigLIP base-patch16-512 (the 256M/500M towers: 93M params) and so400m-patch14-384 (the 2.2B tower)
_SIGLIP_B512 = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "image_size": 512,
    "patch_size": 16,
    "max_image_size": {"longest_edge": 512},
    "size": {"longest_edge": 512},
}
_SIGLIP_SO400M = {
    "hidden_size": 1152,
    "intermediate_size": 4304,
    "num_attention_heads": 16,
    "num_hidden_layers": 27,
    "image_size": 384,
    "patch_size": 14,
    "max_image_size": {"longest_edge": 384},
    "size": {"longest_edge": 384},
}

SMOLVLM2: dict[str, dict[str, Any]] = {
    # SmolLM2-135M LM (9 heads x 64, 3 KV heads), SigLIP-B/16 at 512 px, pixel shuffle 4 -> 64 tokens; fp32 weights
    "smolvlm2-256m": {
        "hub_id": "HuggingFaceTB/SmolVLM2-256M-Video-Instruct",
        "params": "256M",
        "dtype": "float32",
        "scale": 4,
        "vision": _SIGLIP_B512,
        "image_seq_len": 64,
        "longest_edge": 2048,
        "text": {
            "hidden_size": 576,
            "intermediate_size": 1536,
            "num_hidden_layers": 30,
            "num_attention_heads": 9,
            "num_key_value_heads": 3,
            "head_dim": 64,
            "max_position_embeddings": 8192,
            "rope_theta": 100000.0,
            "initializer_range": 0.041666666666666664,
        },
    },
    # SmolLM2-360M LM (15 heads x 64, 5 KV heads), same tower; fp32 weights
    "smolvlm2-500m": {
        "hub_id": "HuggingFaceTB/SmolVLM2-500M-Video-Instruct",
        "params": "500M",
        "dtype": "float32",
        "scale": 4,
        "vision": _SIGLIP_B512,
        "image_seq_len": 64,
        "longest_edge": 2048,
        "text": {
            "hidden_size": 960,
            "intermediate_size": 2560,
            "num_hidden_layers": 32,
            "num_attention_heads": 15,
            "num_key_value_heads": 5,
            "head_dim": 64,
            "max_position_embeddings": 8192,
            "rope_theta": 100000.0,
            "initializer_range": 0.02,
        },
    },
    # SmolLM2-1.7B LM (32 heads x 64, no GQA, 16K context), SigLIP so400m at 384 px, pixel shuffle 3 -> 81
    # tokens; bf16 weights in 2 shards
    "smolvlm2-2.2b": {
        "hub_id": "HuggingFaceTB/SmolVLM2-2.2B-Instruct",
        "params": "2.2B",
        "dtype": "bfloat16",
        "scale": 3,
        "vision": _SIGLIP_SO400M,
        "image_seq_len": 81,
        "longest_edge": 1536,
        "text": {
            "hidden_size": 2048,
            "intermediate_size": 8192,
            "num_hidden_layers": 24,
            "num_attention_heads": 32,
            "num_key_value_heads": 32,
            "head_dim": 64,
            "max_position_embeddings": 16384,
            "rope_theta": 273768.0,
            "initializer_range": 0.02,
        },
    },
}


def write_smolvlm2(
    name: str, folder: Path, *, layers: int | None = None, seed: int = 0, progress: Callable[[str], None] | None = None
) -> Path:
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText

    from vrex_edge.export.lazy import empty_model

    spec = SMOLVLM2[name]
    folder = Path(folder)
    cfg = _smolvlm_config(dict(spec["text"]), dict(spec["vision"]), spec["scale"])
    cfg["torch_dtype"] = spec["dtype"]
    if layers is not None:
        cfg["text_config"]["num_hidden_layers"] = layers
    write_json(folder / "config.json", cfg)
    edge = spec["vision"]["image_size"]
    # preprocessor_config.json / video_preprocessor_config.json / processor_config.json as published
    pre = {
        "do_convert_rgb": True,
        "do_image_splitting": True,
        "do_normalize": True,
        "do_pad": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
        "image_processor_type": "SmolVLMImageProcessor",
        "processor_class": "SmolVLMProcessor",
        "max_image_size": {"longest_edge": edge},
        "resample": 1,
        "rescale_factor": _RESCALE,
        "size": {"longest_edge": spec["longest_edge"]},
        "video_sampling": {"fps": 1, "max_frames": 64, "video_size": {"longest_edge": edge}},
    }
    write_json(folder / "preprocessor_config.json", pre)
    video = {
        **{k: v for k, v in pre.items() if k not in ("image_processor_type", "video_sampling")},
        "video_processor_type": "SmolVLMVideoProcessor",
        "fps": 1,
        "max_frames": 64,
        "do_sample_frames": False,
        "video_sampling": pre["video_sampling"],
    }
    write_json(folder / "video_preprocessor_config.json", video)
    write_json(
        folder / "processor_config.json",
        {"image_seq_len": spec["image_seq_len"], "processor_class": "SmolVLMProcessor"},
    )
    write_json(folder / "chat_template.json", {"chat_template": SMOLVLM2_CHAT_TEMPLATE})
    write_json(folder / "generation_config.json", {"bos_token_id": 1, "eos_token_id": [2, 49279], "pad_token_id": 2})
    sp = _smolvlm_specials()
    tok = synthetic_tokenizer(49280 - len(sp), sp, words=_WORDS)
    save_tokenizer(
        folder,
        tok,
        chat_template=SMOLVLM2_CHAT_TEMPLATE,
        bos_token="<|im_start|>",
        eos_token="<end_of_utterance>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
        additional_special_tokens=["<fake_token_around_image>", "<image>", "<end_of_utterance>"],
        model_max_length=spec["text"]["max_position_embeddings"],
    )
    config = AutoConfig.from_pretrained(str(folder))
    model = empty_model(lambda: AutoModelForImageTextToText.from_config(config))
    dtype = getattr(torch, spec["dtype"])
    shard = 10**12 if spec["dtype"] == "float32" else 5_000_000_000  # 256M/500M ship one model.safetensors
    write_shards(
        folder,
        tensor_specs(model, hf_checkpoint_names(model).__getitem__),
        dtype=dtype,
        seed=seed,
        shard_bytes=shard,
        progress=progress,
    )
    return folder


# ------------------------------------------------------------------------------------- LLaVA-OneVision

# llava-hf/llava-onevision-qwen2-0.5b-ov-hf config.json: Qwen2-0.5B-Instruct LM (14 heads x 64, 2 KV heads,
# tied embeddings, 152000-row table for a 151646-token tokenizer + 2 media tokens) and SigLIP so400m with
# its last layer dropped (26 layers, no head), features from the last layer, all 729 patches ("full").
_GRID_PINPOINTS = [[384 * a, 384 * b] for a in range(1, 7) for b in range(1, 7)]
LLAVA_OV_CONFIG: dict[str, Any] = {
    "architectures": ["LlavaOnevisionForConditionalGeneration"],
    "ignore_index": -100,
    "image_grid_pinpoints": _GRID_PINPOINTS,
    "image_token_index": 151646,
    "model_type": "llava_onevision",
    "multimodal_projector_bias": True,
    "projector_hidden_act": "gelu",
    "text_config": {
        "_name_or_path": "Qwen/Qwen2-0.5B-Instruct",
        "architectures": ["Qwen2ForCausalLM"],
        "bos_token_id": 151643,
        "eos_token_id": 151645,
        "hidden_act": "silu",
        "hidden_size": 896,
        "intermediate_size": 4864,
        "max_position_embeddings": 32768,
        "max_window_layers": 24,
        "model_type": "qwen2",
        "num_attention_heads": 14,
        "num_hidden_layers": 24,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0,
        "sliding_window": 32768,
        "tie_word_embeddings": True,
        "torch_dtype": "bfloat16",
        "use_sliding_window": False,
        "vocab_size": 152000,
    },
    "tie_word_embeddings": True,
    "torch_dtype": "float16",
    "use_image_newline_parameter": True,
    "video_token_index": 151647,
    "vision_aspect_ratio": "anyres_max_9",
    "vision_config": {
        "hidden_act": "gelu_pytorch_tanh",
        "hidden_size": 1152,
        "image_size": 384,
        "intermediate_size": 4304,
        "layer_norm_eps": 1e-06,
        "model_type": "siglip_vision_model",
        "num_attention_heads": 16,
        "num_hidden_layers": 26,
        "patch_size": 14,
        "vision_use_head": False,
    },
    "vision_feature_layer": -1,
    "vision_feature_select_strategy": "full",
}
# the processor's chat template (llava-hf): media first, then text, each turn closed by <|im_end|>
LLAVA_OV_CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n'}}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}{{ '<video>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] }}"
    "{% endfor %}{{'<|im_end|>\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
    "{% endif %}"
)


def write_llava_onevision(
    folder: Path, *, layers: int | None = None, seed: int = 0, progress: Callable[[str], None] | None = None
) -> Path:
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText

    from vrex_edge.export.lazy import empty_model

    folder = Path(folder)
    cfg = copy.deepcopy(LLAVA_OV_CONFIG)
    if layers is not None:
        cfg["text_config"]["num_hidden_layers"] = cfg["text_config"]["max_window_layers"] = layers
    write_json(folder / "config.json", cfg)
    pre = {
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_pad": True,
        "do_rescale": True,
        "do_resize": True,
        "image_grid_pinpoints": _GRID_PINPOINTS,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
        "image_processor_type": "LlavaOnevisionImageProcessor",
        "processor_class": "LlavaOnevisionProcessor",
        "resample": 3,
        "rescale_factor": _RESCALE,
        "size": {"height": 384, "width": 384},
    }
    write_json(folder / "preprocessor_config.json", pre)
    video = {k: v for k, v in pre.items() if k not in ("image_grid_pinpoints", "do_pad", "image_processor_type")}
    write_json(
        folder / "video_preprocessor_config.json", {**video, "video_processor_type": "LlavaOnevisionVideoProcessor"}
    )
    write_json(
        folder / "processor_config.json",
        {
            "num_image_tokens": 729,
            "processor_class": "LlavaOnevisionProcessor",
            "vision_feature_select_strategy": "full",
        },
    )
    write_json(folder / "chat_template.json", {"chat_template": LLAVA_OV_CHAT_TEMPLATE})
    write_json(folder / "generation_config.json", {"bos_token_id": 151643, "eos_token_id": 151645})
    # Qwen2 tokenizer: 151643 BPE tokens, then <|endoftext|> <|im_start|> <|im_end|>, then <image> <video>
    sp = {151643: "<|endoftext|>", 151644: "<|im_start|>", 151645: "<|im_end|>", 151646: "<image>", 151647: "<video>"}
    tok = synthetic_tokenizer(151643, sp, words=_WORDS)
    save_tokenizer(
        folder,
        tok,
        chat_template=LLAVA_OV_CHAT_TEMPLATE,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        additional_special_tokens=["<image>", "<video>"],
        model_max_length=32768,
    )
    config = AutoConfig.from_pretrained(str(folder))
    model = empty_model(lambda: AutoModelForImageTextToText.from_config(config))
    write_shards(
        folder,
        tensor_specs(model, hf_checkpoint_names(model).__getitem__),
        dtype=torch.float16,
        seed=seed,
        shard_bytes=10**12,
        progress=progress,
    )
    return folder


# ------------------------------------------------------------------------------------- VideoLLM-online

# meta-llama/Meta-Llama-3-8B-Instruct config.json (bf16, 4 shards of <= 5 GB)
LLAMA3_8B_INSTRUCT: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 128000,
    "eos_token_id": 128009,
    "hidden_act": "silu",
    "hidden_size": 4096,
    "initializer_range": 0.02,
    "intermediate_size": 14336,
    "max_position_embeddings": 8192,
    "model_type": "llama",
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "num_key_value_heads": 8,
    "pretraining_tp": 1,
    "rms_norm_eps": 1e-05,
    "rope_scaling": None,
    "rope_theta": 500000.0,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "use_cache": True,
    "vocab_size": 128256,
}
# showlab/videollm-online models/configuration_live.py LiveConfigMixin, with the live1+ training arguments
# (models/arguments_live.py LiveOnePlusTrainingArguments): SigLIP-L/384, CLS + 3x3 pooled = 10 tokens, ","
# as the frame-interval token, "<v>" as the frame placeholder, a 1024-wide vision feature.
LIVE1_PLUS_FIELDS: dict[str, Any] = {
    "vision_pretrained": "google/siglip-large-patch16-384",
    "frame_resolution": 384,
    "frame_token_cls": True,
    "frame_token_pooled": [3, 3],
    "frame_num_tokens": 10,
    "frame_token_interval": ",",
    "v_placeholder": "<v>",
    "vision_hidden_size": 1024,
    "stream_loss_weight": 1.0,
}
# chenjoya/videollm-online-8b-v1plus adapter_config.json (peft LoRA; live1+ args: lora_r 128, lora_alpha 256)
LIVE1_PLUS_ADAPTER: dict[str, Any] = {
    "alpha_pattern": {},
    "auto_mapping": None,
    "base_model_name_or_path": "meta-llama/Meta-Llama-3-8B-Instruct",
    "bias": "none",
    "fan_in_fan_out": False,
    "inference_mode": True,
    "init_lora_weights": True,
    "layers_pattern": None,
    "layers_to_transform": None,
    "loftq_config": {},
    "lora_alpha": 256,
    "lora_dropout": 0.05,
    "megatron_config": None,
    "megatron_core": "megatron.core",
    "modules_to_save": ["connector"],
    "peft_type": "LORA",
    "r": 128,
    "rank_pattern": {},
    "revision": None,
    "target_modules": "model.*(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)|lm_head$",
    "task_type": "CAUSAL_LM",
    "use_dora": False,
    "use_rslora": False,
}
# google/siglip-large-patch16-384 config.json (SiglipModel: both towers; fp32 weights, one file)
SIGLIP_L384: dict[str, Any] = {
    "architectures": ["SiglipModel"],
    "initializer_factor": 1.0,
    "model_type": "siglip",
    "text_config": {
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "model_type": "siglip_text_model",
        "num_attention_heads": 16,
        "num_hidden_layers": 24,
        "vocab_size": 32000,
        "max_position_embeddings": 64,
    },
    "vision_config": {
        "hidden_size": 1024,
        "image_size": 384,
        "intermediate_size": 4096,
        "model_type": "siglip_vision_model",
        "num_attention_heads": 16,
        "num_hidden_layers": 24,
        "patch_size": 16,
    },
}
# Llama-3 tokenizer_config.json chat_template (Instruct)
LLAMA3_CHAT_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim"
    " + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)


def _llama3_specials() -> dict[int, str]:
    """Llama-3's 256 special tokens, ids 128000-128255 (after 128000 BPE tokens)."""
    named = {
        128000: "<|begin_of_text|>",
        128001: "<|end_of_text|>",
        128006: "<|start_header_id|>",
        128007: "<|end_header_id|>",
        128009: "<|eot_id|>",
    }
    sp, k = {}, 0
    for i in range(128000, 128256):
        if i in named:
            sp[i] = named[i]
        else:
            sp[i] = f"<|reserved_special_token_{k}|>"
            k += 1
    return sp


def write_videollm_online(
    root: Path, *, layers: int | None = None, seed: int = 0, progress: Callable[[str], None] | None = None
) -> Path:
    """root/{llama, siglip, adapter}; returns root/adapter. The base config.json carries the LiveLlama fields
    (VideoLLM-online saves its base as LiveLlamaForCausalLM); the adapter holds LoRA A/B for every target
    module and the connector (modules_to_save), named as peft saves them."""
    import torch
    from transformers import AutoConfig, AutoModel

    from vrex_edge.export.families.videollm_online import live_lm_class
    from vrex_edge.export.lazy import empty_model

    root = Path(root)
    base_dir, vis_dir, ad_dir = root / "llama", root / "siglip", root / "adapter"
    # SigLIP-L/384
    write_json(vis_dir / "config.json", SIGLIP_L384)
    write_json(
        vis_dir / "preprocessor_config.json",
        {
            "do_normalize": True,
            "do_rescale": True,
            "do_resize": True,
            "image_mean": [0.5, 0.5, 0.5],
            "image_processor_type": "SiglipImageProcessor",
            "image_std": [0.5, 0.5, 0.5],
            "processor_class": "SiglipProcessor",
            "resample": 3,
            "rescale_factor": _RESCALE,
            "size": {"height": 384, "width": 384},
        },
    )
    siglip = empty_model(lambda: AutoModel.from_config(AutoConfig.from_pretrained(str(vis_dir))))
    write_shards(vis_dir, tensor_specs(siglip), dtype=torch.float32, seed=seed, shard_bytes=10**12, progress=progress)
    # Llama-3-8B-Instruct + LiveLlama fields
    cfg = {
        **LLAMA3_8B_INSTRUCT,
        **LIVE1_PLUS_FIELDS,
        "vision_pretrained": str(vis_dir.resolve()),
    }  # local, not the Hub id
    if layers is not None:
        cfg["num_hidden_layers"] = layers
    write_json(base_dir / "config.json", cfg)
    write_json(
        base_dir / "generation_config.json",
        {"bos_token_id": 128000, "eos_token_id": [128001, 128009], "do_sample": True, "temperature": 0.6, "top_p": 0.9},
    )
    tok = synthetic_tokenizer(128000, _llama3_specials(), words=_WORDS)
    save_tokenizer(
        base_dir,
        tok,
        chat_template=LLAMA3_CHAT_TEMPLATE,
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        model_max_length=1_000_000_000_000_000_019_884_624_838_656,
    )
    config = AutoConfig.from_pretrained(str(base_dir))
    lm = empty_model(lambda: live_lm_class()(config))
    base_specs = [(n, s) for n, s in tensor_specs(lm) if not n.startswith("connector.")]
    write_shards(base_dir, base_specs, dtype=torch.bfloat16, seed=seed, progress=progress)
    # the adapter: LoRA on every targeted Linear + the connector, as peft names them
    import re

    r = int(LIVE1_PLUS_ADAPTER["r"])
    target = re.compile(LIVE1_PLUS_ADAPTER["target_modules"])
    ad_specs: list[tuple[str, tuple[int, ...]]] = []
    for name, mod in lm.named_modules():
        if isinstance(mod, torch.nn.Linear) and target.fullmatch(name) and not name.startswith("connector"):
            ad_specs.append((f"base_model.model.{name}.lora_A.weight", (r, mod.in_features)))
            ad_specs.append((f"base_model.model.{name}.lora_B.weight", (mod.out_features, r)))
    ad_specs += [(f"base_model.model.{n}", s) for n, s in tensor_specs(lm) if n.startswith("connector.")]
    write_json(
        ad_dir / "adapter_config.json", {**LIVE1_PLUS_ADAPTER, "base_model_name_or_path": str(base_dir.resolve())}
    )
    write_shards(
        ad_dir,
        ad_specs,
        dtype=torch.bfloat16,
        seed=seed + 1,
        shard_bytes=10**12,
        single_name="adapter_model.safetensors",
        progress=progress,
    )
    return ad_dir


FIXTURES: dict[str, FixtureSpec] = {
    **{
        n: FixtureSpec(n, s["hub_id"], s["params"], lambda folder, _n=n, **kw: write_smolvlm2(_n, folder, **kw))
        for n, s in SMOLVLM2.items()
    },
    "llava-onevision-0.5b": FixtureSpec(
        "llava-onevision-0.5b", "llava-hf/llava-onevision-qwen2-0.5b-ov-hf", "0.9B", write_llava_onevision
    ),
    "videollm-online-8b": FixtureSpec(
        "videollm-online-8b", "chenjoya/videollm-online-8b-v1plus", "8B + 0.4B vision", write_videollm_online
    ),
}


def write_fixture(
    name: str,
    root: str | Path,
    *,
    layers: int | None = None,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Write fixture `name` under root/<name>[-L<layers>] (once: an existing complete folder is reused);
    returns what `vrex-edge export --model` takes."""
    if name not in FIXTURES:
        raise KeyError(f"unknown fixture {name!r} (known: {', '.join(FIXTURES)})")
    folder = Path(root) / (name if layers is None else f"{name}-L{layers}")
    done = folder / ".complete"
    source = folder / "adapter" if name == "videollm-online-8b" else folder
    if done.is_file():
        return source
    out = FIXTURES[name].write(folder, layers=layers, seed=seed, progress=progress)
    done.write_text("ok\n")
    return out
