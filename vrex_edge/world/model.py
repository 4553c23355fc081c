"""The vrex-tiny model: VideoLLM-online's shape at tiny scale, and its checkpoint config.

SigLIP vision (128x128 input, 16x16 patches) -> CLS (attention-pool head) + 3x3 pooled = 10 tokens
per frame -> 2-layer MLP connector -> Llama LM (GQA, RoPE) over a word-level vocabulary.
"""

from __future__ import annotations

from typing import Any

from vrex_edge.world.language import Vocab
from vrex_edge.world.layout import TOKENS_PER_FRAME, special_ids

IMAGE_SIZE = 128  # the world's canvas: no resize on the way in
PATCH = 16
MAX_POSITIONS = 32768
ROPE_THETA = 100_000.0
SPEAK_THRESHOLD = 0.5


def tiny_config(vocab: Vocab, *, speak_threshold: float = SPEAK_THRESHOLD) -> Any:
    from vrex_edge.export.modeling import FrameConfig, VideoLLMConfig

    sp = special_ids(vocab)
    vision = {
        "hidden_size": 128,
        "intermediate_size": 512,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_channels": 3,
        "image_size": IMAGE_SIZE,
        "patch_size": PATCH,
        "hidden_act": "gelu_pytorch_tanh",
        "layer_norm_eps": 1e-6,
        "vision_use_head": True,
    }
    text = {
        "vocab_size": len(vocab.words),
        "hidden_size": 256,
        "intermediate_size": 512,
        "num_hidden_layers": 6,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 64,
        "hidden_act": "silu",
        "max_position_embeddings": MAX_POSITIONS,
        "rms_norm_eps": 1e-5,
        "rope_parameters": {"rope_type": "default", "rope_theta": ROPE_THETA},
        "tie_word_embeddings": False,
        "attention_bias": False,
        "mlp_bias": False,
        "bos_token_id": sp["bos"],
        "eos_token_id": sp["eot"],
        "pad_token_id": sp["pad"],
    }
    frame = FrameConfig(
        image_size=(IMAGE_SIZE, IMAGE_SIZE),
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        pooled_grid=(3, 3),
        use_cls=True,
        resize="pad",
    )
    assert frame.tokens_per_frame == TOKENS_PER_FRAME
    tokens = {
        "bos": sp["bos"],
        "pad": sp["pad"],
        "end_of_turn": [sp["eot"]],
        "frame_placeholder": sp["v"],
        "frame_interval": sp["int"],
    }
    prompt = {
        "system_ids": [sp["bos"]],
        "user_prefix_ids": [sp["user"]],
        "user_suffix_ids": [],
        "reply_prefix_ids": [sp["asst"]],
        "reply_suffix_ids": [],
        "frame_prefix_ids": [],
        "speak_threshold": speak_threshold,
        "max_reply_tokens": 16,
        "system_text": "",
    }
    return VideoLLMConfig(vision, text, frame, tokens, prompt)


def widen_input(model: Any) -> Any:
    """A checkpoint trained at half the resolution (64x64, 8x8 patches) -> the same function at
    IMAGE_SIZE with PATCH-sized patches. The patch grid is unchanged (8x8), and each old kernel
    weight w is spread over a 2x2 pixel block as w / 4: convolving the full-resolution frame with
    it equals convolving its 2x2 block means (cv2.INTER_AREA at exactly half size) with the old
    kernel. Training then goes on from there with the detail the half-size input lost (small
    crosses and circles told apart)."""
    from vrex_edge.export.modeling import VideoLLM, VideoLLMConfig

    d = model.config.to_dict()
    factor = IMAGE_SIZE // int(d["vision_config"]["image_size"])
    if factor == 1:
        return model
    assert factor * int(d["vision_config"]["patch_size"]) == PATCH, d["vision_config"]
    d["vision_config"].update(image_size=IMAGE_SIZE, patch_size=PATCH)
    d["frame"]["image_size"] = [IMAGE_SIZE, IMAGE_SIZE]
    wide = VideoLLM(VideoLLMConfig.from_dict(d))
    state = model.state_dict()
    key = "vision_tower.embeddings.patch_embedding.weight"
    w = state[key]  # [C, 3, p, p]
    state[key] = w.repeat_interleave(factor, 2).repeat_interleave(factor, 3) / factor**2  # [C, 3, P, P]
    wide.load_state_dict(state)
    return wide.train(model.training)
