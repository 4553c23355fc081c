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
from .families_ref import QUESTION, Reference, _frames, check_answer, reference_answer, runtime_answer

FAMILIES = ["videollm_online", "smolvlm", "llava_onevision"]


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


@pytest.fixture(scope="session")
def references(family_models) -> dict[str, Reference]:
    from vrex_edge.export.hf import quiet

    with quiet():
        return {name: Reference(name, src) for name, (src, _) in family_models.items()}


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
    _, bundle = family_models[name]
    ids, frames, want, first_logits = reference_answer(bundle, references[name])
    answer, tok = runtime_answer(bundle)
    check_answer(answer, tok, load_manifest(bundle).tokens.end_of_turn, want)
    # the first answer token's distribution, from the bundle's stages alone (full attention)
    got = BundleRunner(bundle).logits(np.array(ids), frame_embeds=frames)[-1]
    assert np.abs(got - first_logits).max() < 1e-3 * (1 + np.abs(first_logits).max())


def test_videollm_online_manifest(family_models) -> None:
    src, bundle = family_models["videollm_online"]
    m = load_manifest(bundle)
    assert (m.family, m.vision.tokens_per_frame, m.vision.resize, m.vision.pad_color, m.prompt.speak_threshold) == (
        "videollm-online",
        10,
        "pad",
        (0, 0, 0),  # the original's ffmpeg pads with black
        0.725,
    )
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(bundle / m.tokenizer))
    assert tok.id_to_token(m.tokens.frame_placeholder) == "<v>" and m.tokens.frame_placeholder == m.text.vocab_size
    assert tok.decode([m.tokens.frame_interval]) == ","
    assert tok.decode(list(m.prompt.reply_prefix_ids)) == "]\nAssistant:"
    assert tok.decode(list(m.prompt.system_ids), skip_special_tokens=False).endswith(
        "frames received by the assistant.\n\n["
    )
    assert m.prompt.reply_suffix_ids[0] == m.tokens.end_of_turn[0]
    acfg = json.loads((src / "adapter_config.json").read_text())
    assert acfg["modules_to_save"] == ["connector"] and "lm_head" in acfg["target_modules"]


@pytest.mark.parametrize("question", [QUESTION, "What is he holding?", " two  spaces, then {braces}"])
def test_videollm_online_question_is_the_originals_layout(family_models, question: str) -> None:
    """What the runtime feeds for a question after silent frames is the original's query turn
    (its chat template with add_stream_query_prompt and add_generation_prompt), tokenized as one string."""
    from vrex_edge.runtime.engine import load_model
    from vrex_edge.runtime.session import StreamSession

    model = load_model(family_models["videollm_online"][1])
    s = StreamSession(model, speak_threshold=0.0, max_reply_tokens=2)
    bgr, _ = _frames(model.manifest)
    for i, f in enumerate(bgr):
        list(s.push_frame(f, float(i)))
    fed: list[list[int]] = []  # the ids of each chunk the session prefills, its pending tokens first
    feed = s._feed

    def recording(ids, frame=None, **kw) -> None:
        fed.append([*s._pending, *ids])
        feed(ids, frame, **kw)

    s._feed = recording
    list(s.ask(question, 2.0))
    original = "]\nUser: " + question + "\nAssistant:"
    assert fed[0] == model.tokenizer.encode(original)
    assert model.tokenizer.decode(fed[0]) == original


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
