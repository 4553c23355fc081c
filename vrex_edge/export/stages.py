"""Torch wrappers, one per bundle stage, generic over HF Llama/Qwen2-style decoder layers.

Each wrapper follows the stage I/O contract in `vrex_edge.bundle` (batch-free tensors).
Linear layers see a leading batch axis of 1 so that ONNX export emits MatMul (not Gemm),
which the fp16 and int8 converters handle uniformly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class AttnDims:
    num_heads: int
    num_kv_heads: int
    head_dim: int


def attn_dims(config: Any) -> AttnDims:  # an HF text config (Llama, Qwen2, ...)
    heads = int(config.num_attention_heads)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return AttnDims(heads, int(getattr(config, "num_key_value_heads", None) or heads), int(head_dim))


class VisionStage(nn.Module):
    """pixel_values [F, 3, H, W] -> frame_embeds [F, T_v, D] through an `encode` callable."""

    def __init__(self, owner: nn.Module, encode: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__()
        self.owner = owner  # registers the weights
        self.encode = encode

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.encode(pixel_values)  # [F, T_v, D]


class EmbedStage(nn.Module):
    """input_ids [n] -> embeds [n, D]."""

    def __init__(self, embed_tokens: nn.Module):
        super().__init__()
        self.embed_tokens = embed_tokens

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.embed_tokens(input_ids)  # [n, D]


class PreAttention(nn.Module):
    """hidden [n, D] -> q [H, n, hd], k [KVH, n, hd], v [KVH, n, hd] (no RoPE)."""

    def __init__(self, layer: nn.Module, dims: AttnDims):
        super().__init__()
        self.norm = layer.input_layernorm
        attn = layer.self_attn
        self.q_proj, self.k_proj, self.v_proj = attn.q_proj, attn.k_proj, attn.v_proj
        self.dims = dims

    def forward(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        d = self.dims
        x = self.norm(hidden[None])  # [1, n, D]
        q = self.q_proj(x)[0].reshape(-1, d.num_heads, d.head_dim).transpose(0, 1)  # [H, n, hd]
        k = self.k_proj(x)[0].reshape(-1, d.num_kv_heads, d.head_dim).transpose(0, 1)  # [KVH, n, hd]
        v = self.v_proj(x)[0].reshape(-1, d.num_kv_heads, d.head_dim).transpose(0, 1)  # [KVH, n, hd]
        return q, k, v


class PostAttention(nn.Module):
    """hidden [n, D] (the layer input), attn [n, H*hd] -> hidden_out [n, D]."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.o_proj = layer.self_attn.o_proj
        self.norm = layer.post_attention_layernorm
        self.mlp = layer.mlp

    def forward(self, hidden: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        h = hidden[None] + self.o_proj(attn[None])  # [1, n, D]
        return (h + self.mlp(self.norm(h)))[0]  # [n, D]


class HeadStage(nn.Module):
    """hidden [n, D] -> logits [n, V] (final norm + LM head)."""

    def __init__(self, norm: nn.Module, lm_head: nn.Module):
        super().__init__()
        self.norm, self.lm_head = norm, lm_head

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.norm(hidden[None]))[0].float()  # [n, V]


def decoder_parts(lm: nn.Module) -> tuple[nn.Module, list[nn.Module], nn.Module, nn.Module]:
    """(embed_tokens, layers, final norm, lm_head) of an HF *ForCausalLM with a Llama layout."""
    base = lm.get_decoder() if hasattr(lm, "get_decoder") else lm.model
    return base.embed_tokens, list(base.layers), base.norm, lm.get_output_embeddings()


def rotary_module(lm: nn.Module) -> nn.Module:
    base = lm.get_decoder() if hasattr(lm, "get_decoder") else lm.model
    return base.rotary_emb
