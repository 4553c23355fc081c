"""Tiny random models for tests and benchmarks: a word-level tokenizer, Llama/Qwen2 HF folders,
and the project's own vrex_videollm checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

WORDS = (
    "the a an is are was and or of to in on at with for it this that there here what who where when "
    "how why do does did can will not no yes i you he she we they person man woman dog cat car ball cup "
    "table door hand kitchen room street picks up puts down opens closes walks runs sits stands holds "
    "tiny model red blue green big small now then next video frame see sees looking moving system user assistant "
    ", . ? ! : 0 1 2 3 4 5 6 7 8 9"
).split()


def layer_text(*, h: int = 4, kvh: int = 2, hd: int = 16, max_positions: int = 4096, vocab: int = 32) -> Any:
    """The TextSpec of a one-layer model with h query heads over kvh KV heads of head_dim hd (the layer
    caches' dimensions; tests and benchmarks build caches over it without a model)."""
    import numpy as np

    from vrex_edge.bundle import RopeSpec, TextSpec

    inv = tuple(float(x) for x in 1.0 / (10000.0 ** (np.arange(0, hd, 2) / hd)))
    return TextSpec(
        num_layers=1,
        hidden_size=h * hd,
        num_heads=h,
        num_kv_heads=kvh,
        head_dim=hd,
        vocab_size=vocab,
        max_positions=max_positions,
        rms_norm_eps=1e-5,
        rope=RopeSpec(theta=10000.0, inv_freq=inv),
    )


VIDEOLLM_SPECIALS = ["<pad>", "<bos>", "<unk>", "<v>", "<int>", "<user>", "<asst>", "<eot>"]

CHATML_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nyou are a tiny model<|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def word_tokenizer(specials: list[str], words: tuple[str, ...] = WORDS) -> Any:
    """A `tokenizers.Tokenizer` (WordLevel, whitespace split) whose first ids are `specials`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {t: i for i, t in enumerate([*specials, *words])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>" if "<unk>" in vocab else specials[0]))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tok.add_special_tokens(list(specials))
    return tok


def make_tiny_lm(
    path: str | Path,
    *,
    model_type: str = "llama",
    seed: int = 0,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    rope: dict[str, Any] | None = None,
) -> Path:
    """Save a tiny random Llama (tied embeddings, llama3 RoPE scaling) or Qwen2 (q/k/v biases)
    causal LM with a ChatML tokenizer as a Hugging Face folder."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

    from vrex_edge.export.hf import quiet

    path = Path(path)
    specials = ["<unk>", "<pad>", "<bos>", "<|im_start|>", "<|im_end|>", "<|endoftext|>"]
    backend = word_tokenizer(specials)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="<unk>",
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<|im_end|>",
        chat_template=CHATML_TEMPLATE,
    )
    if rope is None and model_type == "llama":
        rope = {
            "rope_type": "llama3",
            "rope_theta": 50000.0,
            "factor": 4.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 128,
        }
    cfg_kw: dict[str, Any] = dict(
        vocab_size=backend.get_vocab_size(),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=2048,
        rms_norm_eps=1e-5,
        tie_word_embeddings=model_type == "llama",
        bos_token_id=2,
        eos_token_id=4,
        pad_token_id=1,
    )
    if rope is not None:
        cfg_kw["rope_parameters"] = rope
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **cfg_kw)).eval()
    with quiet():
        model.save_pretrained(str(path))
        tok.save_pretrained(str(path))
    return path


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

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tok = word_tokenizer(VIDEOLLM_SPECIALS)
    ids = {s: tok.token_to_id(s) for s in VIDEOLLM_SPECIALS}
    vision_config = dict(
        hidden_size=vision_hidden,
        intermediate_size=2 * vision_hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=image_size,
        patch_size=patch_size,
        num_channels=3,
    )
    tc = dict(
        vocab_size=tok.get_vocab_size(),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        bos_token_id=ids["<bos>"],
        eos_token_id=ids["<eot>"],
        pad_token_id=ids["<pad>"],
    )
    tc.update(text_config or {})
    system_text = "you are watching a video stream ."
    config = VideoLLMConfig(
        vision_config=vision_config,
        text_config=tc,
        frame=FrameConfig(image_size=(image_size, image_size), pooled_grid=(3, 3), use_cls=True),
        tokens={
            "bos": ids["<bos>"],
            "frame_placeholder": ids["<v>"],
            "frame_interval": ids["<int>"],
            "end_of_turn": [ids["<eot>"]],
            "pad": ids["<pad>"],
        },
        prompt={
            "system_ids": [ids["<bos>"], *tok.encode(system_text, add_special_tokens=False).ids],
            "user_prefix_ids": [ids["<user>"]],
            "user_suffix_ids": [],
            "reply_prefix_ids": [ids["<asst>"]],
            "reply_suffix_ids": [ids["<eot>"]],
            "speak_threshold": speak_threshold,
            "system_text": system_text,
            "frame_placeholder": ids["<v>"],
            "frame_interval": ids["<int>"],
            "end_of_turn": [ids["<eot>"]],
        },
    )
    torch.manual_seed(seed)
    model = VideoLLM(config).eval()
    tok_file = path / "tokenizer.json"
    tok.save(str(tok_file))
    save_checkpoint(model, path)
    return path
