"""Tiny random checkpoints laid out like the real vision-language families, for tests:
VideoLLM-online (base Llama folder + SigLIP folder + PEFT adapter folder), SmolVLM2 and
LLaVA-OneVision (Hugging Face folders with a tokenizer). Built in-process, no downloads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vrex_edge.testing.tiny import WORDS

_CORPUS = [
    " ".join(WORDS),
    "User: what is the person doing now? Assistant: the person picks up a red cup.",
    "Frame from 00:01: You are provided the following series of frames from a video.",
    "A multimodal AI assistant is helping users with some activities. Below is their conversation.",
    "]\nUser: [\n Assistant: ]\nAssistant: , , , 0 1 2 3 4 5 6 7 8 9 :",
]


# the dimensions every tiny VLM shares (vision tower, language model); each builder adds its own
TINY_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
TINY_TEXT = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=2048,
)


def bpe_tokenizer(specials: list[str], *, vocab_size: int = 400) -> Any:
    """A byte-level BPE `tokenizers.Tokenizer` trained on a few sentences; `specials` come first."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    return tok


def _hf_tokenizer(specials: list[str], **kw: Any) -> Any:
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=bpe_tokenizer(specials), **kw)


def make_tiny_videollm_online(root: str | Path, *, seed: int = 0, resolution: int = 32, patch: int = 8) -> Path:
    """root/{llama, siglip, adapter}; returns the adapter folder (what `vrex-edge export` takes).

    The adapter is what VideoLLM-online's training saves: adapter_config.json with LoRA on
    q/k/v/o/gate/up/down and lm_head plus modules_to_save=["connector"], and
    adapter_model.safetensors. The base config carries the LiveLlamaConfig fields."""
    import json

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM, SiglipConfig, SiglipModel

    from vrex_edge.export.families.videollm_online import live_lm_class
    from vrex_edge.export.hf import quiet

    root = Path(root)
    base_dir, vis_dir, ad_dir = root / "llama", root / "siglip", root / "adapter"
    tok = _hf_tokenizer(["<|begin_of_text|>", "<|eot_id|>"], bos_token="<|begin_of_text|>", eos_token="<|eot_id|>")
    vocab = len(tok)
    torch.manual_seed(seed)
    vcfg = SiglipConfig(
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=resolution,
            patch_size=patch,
        ),
        text_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=4,
            vocab_size=64,
            max_position_embeddings=16,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=0,
        ),
    )
    with quiet():
        SiglipModel(vcfg).eval().save_pretrained(str(vis_dir))
    live = dict(
        vision_pretrained=str(vis_dir),
        frame_resolution=resolution,
        frame_token_cls=True,
        frame_token_pooled=[3, 3],
        frame_num_tokens=10,
        v_placeholder="<v>",
        frame_token_interval=",",
        vision_hidden_size=32,
    )
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 256,
        },
    )
    with quiet():
        LlamaForCausalLM(cfg).eval().save_pretrained(str(base_dir))
        tok.save_pretrained(str(base_dir))
    raw = json.loads((base_dir / "config.json").read_text())
    (base_dir / "config.json").write_text(json.dumps({**raw, **live}, indent=1))
    cfg.vision_hidden_size = 32
    with quiet():
        model = live_lm_class().from_pretrained(str(base_dir), config=cfg, dtype=torch.float32)
    lora = LoraConfig(
        r=4,
        lora_alpha=8,
        lora_dropout=0.05,
        task_type="CAUSAL_LM",
        modules_to_save=["connector"],
        target_modules="model.*(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)|lm_head$",
    )
    peft_model = get_peft_model(model, lora)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name or "connector" in name:  # trained parts: random, so the merge is visible
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    peft_model.peft_config["default"].base_model_name_or_path = str(base_dir)
    with quiet():
        peft_model.save_pretrained(str(ad_dir))
    return ad_dir


def make_tiny_smolvlm(path: str | Path, *, seed: int = 0, image_size: int = 32, patch: int = 4, scale: int = 2) -> Path:
    """A tiny SmolVLMForConditionalGeneration (Idefics3 layout, SmolLM2-style Llama LM) HF folder."""
    import torch
    from transformers import SmolVLMConfig, SmolVLMForConditionalGeneration

    from vrex_edge.export.hf import quiet

    path = Path(path)
    specials = [
        "<|endoftext|>",
        "<|im_start|>",
        "<end_of_utterance>",
        "<fake_token_around_image>",
        "<global-img>",
        "<image>",
    ]
    tok = _hf_tokenizer(
        specials,
        bos_token="<|im_start|>",
        eos_token="<end_of_utterance>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    cfg = SmolVLMConfig(
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        scale_factor=scale,
        vision_config=dict(
            **TINY_VISION,
            image_size=image_size,
            patch_size=patch,
        ),
        text_config=dict(
            model_type="llama",
            vocab_size=len(tok),
            **TINY_TEXT,
            rms_norm_eps=1e-5,
            rope_theta=100000.0,
            tie_word_embeddings=False,
            pad_token_id=0,
        ),
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    with quiet():
        SmolVLMForConditionalGeneration(cfg).eval().save_pretrained(str(path))
        tok.save_pretrained(str(path))
    return path


def make_tiny_llava_onevision(path: str | Path, *, seed: int = 0, image_size: int = 32, patch: int = 4) -> Path:
    """A tiny LlavaOnevisionForConditionalGeneration (SigLIP + Qwen2 LM) HF folder with a ChatML tokenizer."""
    import torch
    from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration

    from vrex_edge.export.hf import quiet

    path = Path(path)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"]
    tok = _hf_tokenizer(specials, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token="<|endoftext|>")
    cfg = LlavaOnevisionConfig(
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        video_token_id=tok.convert_tokens_to_ids("<video>"),
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
        vision_config=dict(
            model_type="siglip_vision_model",
            **TINY_VISION,
            image_size=image_size,
            patch_size=patch,
        ),
        text_config=dict(
            model_type="qwen2",
            vocab_size=len(tok),
            **TINY_TEXT,
            rms_norm_eps=1e-6,
            rope_theta=1000000.0,
            tie_word_embeddings=False,
        ),
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlavaOnevisionForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        model.model.image_newline.normal_()
    with quiet():
        model.save_pretrained(str(path))
        tok.save_pretrained(str(path))
    return path
