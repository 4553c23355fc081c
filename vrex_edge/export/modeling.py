"""PyTorch definition of the VideoLLM-online-shaped model (vision tower -> 10 tokens per frame
-> 2-layer MLP connector -> Llama LM). Used by export, training, and parity tests.

A checkpoint folder ("vrex_videollm" model_type) holds:
    config.json        {"model_type": "vrex_videollm", "vision_config", "text_config",
                        "frame", "tokens", "prompt"}
    model.safetensors  state dict of VideoLLM
    tokenizer.json     a `tokenizers` tokenizer
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM, SiglipVisionConfig, SiglipVisionModel

MODEL_TYPE = "vrex_videollm"


@dataclass
class FrameConfig:
    image_size: tuple[int, int] = (384, 384)
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    pooled_grid: tuple[int, int] = (3, 3)
    use_cls: bool = True  # SigLIP has no CLS token: its attention-pooling head output plays that role
    resize: str = "pad"

    @property
    def tokens_per_frame(self) -> int:
        return int(self.use_cls) + self.pooled_grid[0] * self.pooled_grid[1]


@dataclass
class VideoLLMConfig:
    vision_config: dict[str, Any]
    text_config: dict[str, Any]
    frame: FrameConfig = field(default_factory=FrameConfig)
    tokens: dict[str, Any] = field(default_factory=dict)  # frame_placeholder, frame_interval, end_of_turn, bos
    prompt: dict[str, Any] = field(default_factory=dict)  # PromptSpec fields (ids + speak_threshold)

    def to_dict(self) -> dict[str, Any]:
        f = self.frame
        return {
            "model_type": MODEL_TYPE,
            "vision_config": self.vision_config,
            "text_config": self.text_config,
            "frame": {
                "image_size": list(f.image_size),
                "mean": list(f.mean),
                "std": list(f.std),
                "pooled_grid": list(f.pooled_grid),
                "use_cls": f.use_cls,
                "resize": f.resize,
            },
            "tokens": self.tokens,
            "prompt": self.prompt,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VideoLLMConfig:
        f = d.get("frame", {})
        frame = FrameConfig(
            image_size=tuple(f.get("image_size", (384, 384))),  # type: ignore[arg-type]
            mean=tuple(f.get("mean", (0.5, 0.5, 0.5))),  # type: ignore[arg-type]
            std=tuple(f.get("std", (0.5, 0.5, 0.5))),  # type: ignore[arg-type]
            pooled_grid=tuple(f.get("pooled_grid", (3, 3))),  # type: ignore[arg-type]
            use_cls=bool(f.get("use_cls", True)),
            resize=str(f.get("resize", "pad")),
        )
        return cls(d["vision_config"], d["text_config"], frame, dict(d.get("tokens", {})), dict(d.get("prompt", {})))


def _bins(n_in: int, n_out: int) -> torch.Tensor:
    """[n_out, n_in] averaging weights of adaptive_avg_pool's bins (floor start, ceil end)."""
    m = torch.zeros(n_out, n_in)
    for i in range(n_out):
        a, b = (i * n_in) // n_out, -((-(i + 1) * n_in) // n_out)
        m[i, a:b] = 1.0 / (b - a)
    return m


class VideoLLM(nn.Module):
    def __init__(self, config: VideoLLMConfig):
        super().__init__()
        self.config = config
        vcfg = SiglipVisionConfig(**config.vision_config)
        tcfg = LlamaConfig(**config.text_config)
        self.vision_tower = SiglipVisionModel(vcfg)
        d_vis, d_txt = vcfg.hidden_size, tcfg.hidden_size
        self.connector = nn.Sequential(nn.Linear(d_vis, d_txt), nn.GELU(), nn.Linear(d_txt, d_txt))
        self.language_model = LlamaForCausalLM(tcfg)

    def encode_frames(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixel_values [F, 3, H, W] (normalised) -> frame tokens [F, T_v, D]."""
        out = self.vision_tower(pixel_values=pixel_values)
        patches = out.last_hidden_state  # [F, P, C]
        n_frames, _, c = patches.shape
        fc = self.config.frame
        p = self.vision_tower.config.patch_size
        gh, gw = fc.image_size[0] // p, fc.image_size[1] // p
        grid = patches.transpose(1, 2).reshape(n_frames, c, gh, gw)  # [F, C, gh, gw]
        if gh % fc.pooled_grid[0] or gw % fc.pooled_grid[1]:
            # same bins as adaptive_avg_pool2d, as matmuls: ONNX export has no uneven adaptive pooling
            mh = _bins(gh, fc.pooled_grid[0]).to(grid)  # [ph, gh]
            mw = _bins(gw, fc.pooled_grid[1]).to(grid)  # [pw, gw]
            pooled = torch.matmul(torch.matmul(mh, grid), mw.t()).flatten(2).transpose(1, 2)  # [F, 9, C]
        else:
            pooled = F.adaptive_avg_pool2d(grid, fc.pooled_grid).flatten(2).transpose(1, 2)  # [F, 9, C]
        parts = [pooled]
        if fc.use_cls:
            cls = out.pooler_output if out.pooler_output is not None else patches.mean(1)  # [F, C]
            parts.insert(0, cls[:, None, :])
        return self.connector(torch.cat(parts, dim=1))  # [F, T_v, D]

    def embed(self, input_ids: torch.Tensor, frame_tokens: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids [B, n]; frame placeholder positions take frame_tokens [K, D] in order."""
        emb = self.language_model.get_input_embeddings()(input_ids)  # [B, n, D]
        ph = self.config.tokens.get("frame_placeholder")
        if frame_tokens is not None and ph is not None:
            mask = input_ids == ph
            emb = emb.masked_scatter(mask[..., None], frame_tokens.to(emb.dtype))
        return emb

    def forward(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None, **kw: Any):
        frames = None
        if pixel_values is not None:
            frames = self.encode_frames(pixel_values).reshape(-1, self.language_model.config.hidden_size)
        return self.language_model(inputs_embeds=self.embed(input_ids, frames), **kw)


def save_checkpoint(model: VideoLLM, path: str | Path, tokenizer_json: str | Path | None = None) -> None:
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(model.config.to_dict(), indent=1))
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path / "model.safetensors"))
    if tokenizer_json is not None:
        (path / "tokenizer.json").write_bytes(Path(tokenizer_json).read_bytes())


def load_checkpoint(path: str | Path) -> VideoLLM:
    from safetensors.torch import load_file

    path = Path(path)
    cfg = VideoLLMConfig.from_dict(json.loads((path / "config.json").read_text()))
    model = VideoLLM(cfg)
    state = load_file(str(path / "model.safetensors"))
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("lm_head.weight")]  # tied embeddings
    if missing or unexpected:
        raise ValueError(
            f"checkpoint {path} does not match its config: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    if cfg.text_config.get("tie_word_embeddings"):
        model.language_model.tie_weights()
    return model.eval()
