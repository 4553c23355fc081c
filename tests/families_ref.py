"""Test helpers for the vision-language families: each family's PyTorch reference (frame tokens,
layers, greedy decoding) and the two checks run at tiny and at real size: every stage against the
reference's own modules, and a stream + question through StreamSession against transformers greedy."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from .export_ref import BundleRunner

QUESTION = "what is the person doing now ?"
MAX_REPLY = 6


class Reference:
    """The PyTorch model of a family: frame tokens, input embeddings and logits."""

    def __init__(self, name: str, src: Path):
        from transformers import AutoModel, AutoModelForImageTextToText

        self.name = name
        if name == "videollm_online":
            from peft import PeftModel
            from transformers import AutoConfig

            from vrex_edge.export.families.videollm_online import live_lm_class

            acfg = json.loads((src / "adapter_config.json").read_text())
            base = Path(acfg["base_model_name_or_path"])
            raw = json.loads((base / "config.json").read_text())
            cfg = AutoConfig.from_pretrained(str(base))
            cfg.vision_hidden_size = raw["vision_hidden_size"]
            lm = live_lm_class().from_pretrained(str(base), config=cfg, dtype=torch.float32)
            self.model = PeftModel.from_pretrained(lm, str(src)).eval()  # LoRA applied on the fly, not merged
            self.lm = self.model.base_model.model
            self.tower = AutoModel.from_pretrained(raw["vision_pretrained"]).vision_model.eval()
        else:
            from transformers import AutoTokenizer

            self.model = AutoModelForImageTextToText.from_pretrained(str(src), dtype=torch.float32).eval()
            self.lm = self.model
            self.fake_id = AutoTokenizer.from_pretrained(str(src)).convert_tokens_to_ids("<fake_token_around_image>")

    def layers(self) -> list:
        m = self.lm.model
        return list(
            (
                m.text_model if self.name == "smolvlm" else m.language_model if self.name == "llava_onevision" else m
            ).layers
        )

    @torch.no_grad()
    def frame_tokens(self, px: torch.Tensor, tokens_per_frame: int) -> torch.Tensor:
        """px [F, 3, H, W] -> [F, T_v, D] through the reference's own vision code."""
        if self.name == "videollm_online":
            out = self.tower(px)
            h = out.last_hidden_state  # [F, P, C]
            s = int(h.shape[1] ** 0.5)
            grid = h.reshape(h.shape[0], s, s, -1).permute(0, 3, 1, 2)
            pooled = torch.nn.functional.adaptive_avg_pool2d(grid, (3, 3)).flatten(2).transpose(1, 2)
            return self.lm.connector(torch.cat([out.pooler_output[:, None], pooled], dim=1))
        if self.name == "smolvlm":
            feats = self.model.model.get_image_features(px[None]).pooler_output[0]  # [F*T, D]
            fake = self.model.model.text_model.embed_tokens.weight[self.fake_id]
            feats = feats.reshape(px.shape[0], tokens_per_frame - 1, -1)
            return torch.cat([feats, fake[None, None].expand(px.shape[0], 1, -1)], dim=1)
        # LLaVA-OneVision: each frame a one-frame clip (its features + image_newline)
        return torch.stack([self.model.model.get_video_features(f[None, None]).pooler_output[0] for f in px])

    @torch.no_grad()
    def greedy(
        self, ids: list[int], frames: torch.Tensor, placeholder: int, stops: tuple[int, ...]
    ) -> tuple[list[int], np.ndarray]:
        """Greedy tokens after `ids` whose placeholder slots take `frames` [K, D]; and the first logits."""
        emb_layer = self.lm.get_input_embeddings()
        out, first = [], None
        for _ in range(MAX_REPLY):
            t = torch.tensor(ids)
            e = emb_layer(t.clamp(max=emb_layer.num_embeddings - 1))  # the placeholder may be past the vocab
            e[t == placeholder] = frames
            logits = self.model(inputs_embeds=e[None]).logits[0, -1]
            first = logits.numpy() if first is None else first
            tok = int(logits.argmax())
            out.append(tok)
            if tok in stops:
                break
            ids = [*ids, tok]
        return out, first


def _frames(m, n: int = 2) -> tuple[list[np.ndarray], torch.Tensor]:
    from vrex_edge.runtime.preprocess import Preprocessor

    rng = np.random.default_rng(3)
    bgr = [rng.integers(0, 256, (40 + 8 * i, 56, 3), dtype=np.uint8) for i in range(n)]
    pre = Preprocessor(m.vision)
    return bgr, torch.from_numpy(np.stack([pre(f) for f in bgr]))


def check_stages(bundle: Path, ref: Reference, *, n: int = 5, rtol: float = 1e-4) -> dict[str, float]:
    """The vision stage and every decoder stage of `bundle` against `ref`'s own modules; returns
    {stage: max abs error / (1 + max |reference|)} and asserts each is below `rtol`."""
    r = BundleRunner(bundle)
    m = r.m
    out: dict[str, float] = {}

    def rel(key: str, got: np.ndarray, want: np.ndarray) -> None:
        assert got.shape == want.shape, f"{key}: {got.shape} != {want.shape}"
        out[key] = float(np.abs(got - want).max() / (1 + np.abs(want).max()))
        assert out[key] < rtol, f"{key}: relative error {out[key]:.2e}"

    _, px = _frames(m)
    (got,) = r.run(m.stages.vision, pixel_values=px.numpy())
    want = ref.frame_tokens(px, m.vision.tokens_per_frame).numpy()
    assert got.shape == (2, m.vision.tokens_per_frame, m.text.hidden_size)
    rel("vision", got, want)
    rng = np.random.default_rng(1)
    d, h, hd = m.text.hidden_size, m.text.num_heads, m.text.head_dim
    with torch.no_grad():
        for i, (stage, layer) in enumerate(zip(m.stages.layers, ref.layers(), strict=True)):
            x = rng.standard_normal((n, d)).astype(np.float32)
            q, _, v = r.run(stage.pre, hidden=x)
            xn = layer.input_layernorm(torch.from_numpy(x)[None])
            rel(f"layers.{i}.pre", q, layer.self_attn.q_proj(xn)[0].reshape(n, h, hd).transpose(0, 1).numpy())
            a = rng.standard_normal((n, h * hd)).astype(np.float32)
            (got,) = r.run(stage.post, hidden=x, attn=a)
            mid = torch.from_numpy(x)[None] + layer.self_attn.o_proj(torch.from_numpy(a)[None])
            rel(f"layers.{i}.post", got, (mid + layer.mlp(layer.post_attention_layernorm(mid)))[0].numpy())
    return out


def stream_ids(m, tok, n_frames: int) -> list[int]:
    """The token ids of a stream of `n_frames` silent frames then QUESTION, as the runtime lays them out."""
    from vrex_edge.runtime.session import frame_prefix_text, question_ids

    p, t = m.prompt, m.tokens
    ids = list(p.system_ids)
    for i in range(n_frames):
        if i and t.frame_interval is not None:
            ids.append(t.frame_interval)
        ids += list(p.frame_prefix_ids)
        if p.frame_prefix_template:
            ids += tok.encode(frame_prefix_text(p.frame_prefix_template, float(i)))
        ids += [t.frame_placeholder] * m.vision.tokens_per_frame
    return ids + question_ids(p, tok, QUESTION)


def reference_answer(bundle: Path, ref: Reference) -> tuple[list[int], np.ndarray, list[int], np.ndarray]:
    """(stream ids, frame tokens [K, D], greedy answer tokens, first answer logits) of the reference."""
    from vrex_edge.bundle import load_manifest
    from vrex_edge.runtime.tokenizer import Tokenizer

    m = load_manifest(bundle)
    tok = Tokenizer(bundle / m.tokenizer)
    _, px = _frames(m)
    ids = stream_ids(m, tok, len(px))
    frames = ref.frame_tokens(px, m.vision.tokens_per_frame).reshape(-1, m.text.hidden_size)
    want, first = ref.greedy(ids, frames, m.tokens.frame_placeholder, m.tokens.end_of_turn)
    return ids, frames.numpy(), want, first


def runtime_answer(bundle: Path):
    """The runtime's Answer event after two silent frames and QUESTION, and the model's tokenizer."""
    from vrex_edge.runtime.engine import load_model
    from vrex_edge.runtime.events import Answer
    from vrex_edge.runtime.session import StreamSession

    model = load_model(bundle)
    bgr, _ = _frames(model.manifest)
    s = StreamSession(model, speak_threshold=0.0, max_reply_tokens=MAX_REPLY)
    events = [e for i, f in enumerate(bgr) for e in s.push_frame(f, float(i))]
    assert not any(getattr(e, "spoke", False) for e in events)
    (answer,) = [e for e in s.ask(QUESTION, 2.0) if isinstance(e, Answer)]
    return answer, model.tokenizer


def check_answer(answer, tok, end_of_turn, want: list[int]) -> None:
    assert answer.tokens == len(want)
    assert answer.text == tok.decode(want[:-1] if want[-1] in end_of_turn else want).strip()
