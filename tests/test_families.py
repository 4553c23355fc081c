"""Vision-language families at tiny random size, each against its own PyTorch reference:
VideoLLM-online (PEFT adapter, LoRA merged at export), SmolVLM2 and LLaVA-OneVision.

Per family: the vision stage vs the reference's own vision path, every decoder stage vs the
reference's (unmerged) layers, and the whole bundle run through the runtime's StreamSession
(frames, then a question) vs greedy decoding of the transformers model on the same frames and prompt.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from vrex_edge.bundle import load_manifest
from vrex_edge.export import export_bundle
from vrex_edge.export.registry import detect_family

from .export_ref import BundleRunner

FAMILIES = ["videollm_online", "smolvlm", "llava_onevision"]
QUESTION = "what is the person doing now ?"
MAX_REPLY = 6


@pytest.fixture(scope="session")
def family_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """family -> (checkpoint source, fp32 bundle), built once."""
    from vrex_edge.testing import tiny_vlm

    root = tmp_path_factory.mktemp("families")
    out = {}
    for name in FAMILIES:
        src = getattr(tiny_vlm, f"make_tiny_{name}")(root / name)
        out[name] = (src, export_bundle(src, root / f"{name}-bundle").out)
    return out


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
        return list((m.text_model if self.name == "smolvlm" else m.language_model if self.name == "llava_onevision" else m).layers)

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
    def greedy(self, ids: list[int], frames: torch.Tensor, placeholder: int, stops: tuple[int, ...]) -> tuple[list[int], np.ndarray]:
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


@pytest.fixture(scope="session")
def references(family_models) -> dict[str, Reference]:
    from vrex_edge.export.hf import quiet

    with quiet():
        return {name: Reference(name, src) for name, (src, _) in family_models.items()}


def _frames(m, n: int = 2) -> tuple[list[np.ndarray], torch.Tensor]:
    from vrex_edge.runtime.preprocess import Preprocessor

    rng = np.random.default_rng(3)
    bgr = [rng.integers(0, 256, (40 + 8 * i, 56, 3), dtype=np.uint8) for i in range(n)]
    pre = Preprocessor(m.vision)
    return bgr, torch.from_numpy(np.stack([pre(f) for f in bgr]))


@pytest.mark.parametrize("name", FAMILIES)
def test_vision_and_decoder_stages_match_pytorch(family_models, references, name: str) -> None:
    src, bundle = family_models[name]
    ref = references[name]
    r = BundleRunner(bundle)
    m = r.m
    assert detect_family(src) == m.family
    _, px = _frames(m)
    (got,) = r.run(m.stages.vision, pixel_values=px.numpy())
    want = ref.frame_tokens(px, m.vision.tokens_per_frame).numpy()
    assert got.shape == want.shape == (2, m.vision.tokens_per_frame, m.text.hidden_size)
    np.testing.assert_allclose(got, want, atol=1e-4 * (1 + np.abs(want).max()))
    rng = np.random.default_rng(1)
    n, d, h, hd = 5, m.text.hidden_size, m.text.num_heads, m.text.head_dim
    with torch.no_grad():
        for i, (stage, layer) in enumerate(zip(m.stages.layers, ref.layers(), strict=True)):
            x = rng.standard_normal((n, d)).astype(np.float32)
            q, _, v = r.run(stage.pre, hidden=x)
            xn = layer.input_layernorm(torch.from_numpy(x)[None])
            want_q = layer.self_attn.q_proj(xn)[0].reshape(n, h, hd).transpose(0, 1).numpy()
            np.testing.assert_allclose(q, want_q, atol=1e-4, err_msg=f"layer {i} q")
            a = rng.standard_normal((n, h * hd)).astype(np.float32)
            (out,) = r.run(stage.post, hidden=x, attn=a)
            mid = torch.from_numpy(x)[None] + layer.self_attn.o_proj(torch.from_numpy(a)[None])
            want = (mid + layer.mlp(layer.post_attention_layernorm(mid)))[0].numpy()
            np.testing.assert_allclose(out, want, atol=1e-4, err_msg=f"layer {i} post")
    assert max(m.notes["parity"]["max_abs_error"].values()) < 1e-4


@pytest.mark.parametrize("name", FAMILIES)
def test_stream_answer_matches_transformers_greedy(family_models, references, name: str) -> None:
    from vrex_edge.runtime.engine import load_model
    from vrex_edge.runtime.events import Answer
    from vrex_edge.runtime.session import StreamSession, frame_prefix_text

    _, bundle = family_models[name]
    model = load_model(bundle)
    m, tok = model.manifest, model.tokenizer
    bgr, px = _frames(m)
    # the runtime: two silent frames (threshold 0), then a question
    s = StreamSession(model, speak_threshold=0.0, max_reply_tokens=MAX_REPLY)
    events = [e for i, f in enumerate(bgr) for e in s.push_frame(f, float(i))]
    assert not any(getattr(e, "spoke", False) for e in events)
    (answer,) = [e for e in s.ask(QUESTION, 2.0) if isinstance(e, Answer)]
    # the same stream layout, built by hand for the reference
    p, t = m.prompt, m.tokens
    ids = list(p.system_ids)
    for i in range(len(bgr)):
        if i and t.frame_interval is not None:
            ids.append(t.frame_interval)
        ids += list(p.frame_prefix_ids)
        if p.frame_prefix_template:
            ids += tok.encode(frame_prefix_text(p.frame_prefix_template, float(i)))
        ids += [t.frame_placeholder] * m.vision.tokens_per_frame
    ids += [*p.user_prefix_ids, *tok.encode(QUESTION), *p.user_suffix_ids, *p.reply_prefix_ids]
    ref = references[name]
    frames = ref.frame_tokens(px, m.vision.tokens_per_frame).reshape(-1, m.text.hidden_size)
    want, first_logits = ref.greedy(ids, frames, t.frame_placeholder, t.end_of_turn)
    assert answer.tokens == len(want)
    assert answer.text == tok.decode(want[:-1] if want[-1] in t.end_of_turn else want).strip()
    # the first answer token's distribution, from the bundle's stages alone (full attention)
    emb = BundleRunner(bundle)
    got = emb.logits(np.array(ids), frame_embeds=frames.numpy())[-1]
    assert np.abs(got - first_logits).max() < 1e-3 * (1 + np.abs(first_logits).max())


def test_videollm_online_manifest(family_models) -> None:
    src, bundle = family_models["videollm_online"]
    m = load_manifest(bundle)
    assert (m.family, m.vision.tokens_per_frame, m.vision.resize, m.prompt.speak_threshold) == ("videollm-online", 10, "pad", 0.725)
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(bundle / m.tokenizer))
    assert tok.id_to_token(m.tokens.frame_placeholder) == "<v>" and m.tokens.frame_placeholder == m.text.vocab_size
    assert tok.decode([m.tokens.frame_interval]) == ","
    assert tok.decode(list(m.prompt.reply_prefix_ids)) == "]\nAssistant:"
    assert tok.decode(list(m.prompt.system_ids), skip_special_tokens=False).endswith("frames received by the assistant.\n\n[")
    assert m.prompt.reply_suffix_ids[0] == m.tokens.end_of_turn[0]
    acfg = json.loads((src / "adapter_config.json").read_text())
    assert acfg["modules_to_save"] == ["connector"] and "lm_head" in acfg["target_modules"]


def test_smolvlm_frame_prefix_is_timestamped(family_models) -> None:
    from vrex_edge.runtime.session import frame_prefix_text

    m = load_manifest(family_models["smolvlm"][1])
    assert m.prompt.frame_prefix_template.startswith("\nFrame from {mm:02d}:{ss:02d}:")
    assert frame_prefix_text(m.prompt.frame_prefix_template, 75.5).startswith("\nFrame from 01:15:")
    assert m.vision.tokens_per_frame == 16 + 1 and m.tokens.frame_interval is None


def test_int4_export_uses_4bit_weights(family_models, tmp_path: Path) -> None:
    import onnx

    src, fp32 = family_models["llava_onevision"]
    report = export_bundle(src, tmp_path / "int4", dtype="int4")
    m = load_manifest(report.out)
    assert m.dtype == "int4" and max(report.errors.values()) < 0.5
    graph = onnx.load(str(report.out / m.stages.layers[0].post.file)).graph
    nbits = [n for n in graph.node if n.op_type == "MatMulNBits"]
    assert len(nbits) == 4 and all(next(a.i for a in n.attribute if a.name == "bits") == 4 for n in nbits)
    # the 4-bit bundle still tracks the fp32 one on a prompt
    ids = np.array(list(m.prompt.system_ids) + list(m.prompt.reply_prefix_ids))
    a, b = BundleRunner(fp32).logits(ids)[-1], BundleRunner(report.out).logits(ids)[-1]
    assert np.abs(a - b).max() < 0.2 * (1 + np.abs(a).max())
