"""The vrex-tiny model: VideoLLM-online's shape at tiny scale, and its checkpoint config.

SigLIP vision (64x64 input, 8x8 patches) -> CLS (attention-pool head) + 3x3 pooled = 10 tokens
per frame -> 2-layer MLP connector -> Llama LM (GQA, RoPE) over a word-level vocabulary.
"""

from __future__ import annotations

from typing import Any

from vrex_edge.world.language import Vocab
from vrex_edge.world.layout import TOKENS_PER_FRAME, special_ids

IMAGE_SIZE = 64
MAX_POSITIONS = 32768
ROPE_THETA = 100_000.0
SPEAK_THRESHOLD = 0.5


def tiny_config(vocab: Vocab, *, speak_threshold: float = SPEAK_THRESHOLD) -> Any:
    from vrex_edge.export.modeling import FrameConfig, VideoLLMConfig

    sp = special_ids(vocab)
    vision = {"hidden_size": 128, "intermediate_size": 512, "num_hidden_layers": 4, "num_attention_heads": 4,
              "num_channels": 3, "image_size": IMAGE_SIZE, "patch_size": 8, "hidden_act": "gelu_pytorch_tanh",
              "layer_norm_eps": 1e-6, "vision_use_head": True}
    text = {"vocab_size": len(vocab.words), "hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 6,
            "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 64, "hidden_act": "silu",
            "max_position_embeddings": MAX_POSITIONS, "rms_norm_eps": 1e-5,
            "rope_parameters": {"rope_type": "default", "rope_theta": ROPE_THETA},
            "tie_word_embeddings": False, "attention_bias": False, "mlp_bias": False,
            "bos_token_id": sp["bos"], "eos_token_id": sp["eot"], "pad_token_id": sp["pad"]}
    frame = FrameConfig(image_size=(IMAGE_SIZE, IMAGE_SIZE), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                        pooled_grid=(3, 3), use_cls=True, resize="pad")
    assert frame.tokens_per_frame == TOKENS_PER_FRAME
    tokens = {"bos": sp["bos"], "pad": sp["pad"], "end_of_turn": [sp["eot"]],
              "frame_placeholder": sp["v"], "frame_interval": sp["int"]}
    prompt = {"system_ids": [sp["bos"]], "user_prefix_ids": [sp["user"]], "user_suffix_ids": [],
              "reply_prefix_ids": [sp["asst"]], "reply_suffix_ids": [], "frame_prefix_ids": [],
              "speak_threshold": speak_threshold, "max_reply_tokens": 16, "system_text": ""}
    return VideoLLMConfig(vision, text, frame, tokens, prompt)
