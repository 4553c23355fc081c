"""Export: per-stage ONNX parity with PyTorch, whole-bundle parity, manifests, errors, atomicity, dtypes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from vrex_edge.bundle import load_manifest
from vrex_edge.errors import ExportError
from vrex_edge.export import ExportReport, export_bundle
from vrex_edge.export.registry import detect_family, get_family, resolve_source

from .export_ref import BundleRunner

FAMILIES = ["tiny_videollm", "tiny_llama", "tiny_qwen2"]


def _source_and_bundle(request: pytest.FixtureRequest, name: str) -> tuple[Path, Path]:
    src = "tiny_videollm_checkpoint" if name == "tiny_videollm" else f"{name}_hf"
    return request.getfixturevalue(src), request.getfixturevalue(f"{name}_bundle")


def _torch_model(src: Path):
    """The PyTorch reference: (VideoLLM or None, HF causal LM)."""
    from transformers import AutoModelForCausalLM

    from vrex_edge.export.modeling import load_checkpoint

    if json.loads((src / "config.json").read_text())["model_type"] == "vrex_videollm":
        vm = load_checkpoint(src)
        return vm, vm.language_model
    return None, AutoModelForCausalLM.from_pretrained(str(src), dtype=torch.float32).eval()


@pytest.mark.parametrize("name", FAMILIES)
def test_every_stage_matches_pytorch(request: pytest.FixtureRequest, name: str) -> None:
    src, bundle = _source_and_bundle(request, name)
    vm, lm = _torch_model(src)
    r = BundleRunner(bundle)
    m, base = r.m, lm.model
    rng = np.random.default_rng(7)
    n, d = 5, m.text.hidden_size
    hd, h, kvh = m.text.head_dim, m.text.num_heads, m.text.num_kv_heads
    tol = 1e-4
    with torch.no_grad():
        ids = rng.integers(0, m.text.vocab_size, n)
        (emb,) = r.run(m.stages.embed, input_ids=ids)
        np.testing.assert_allclose(emb, base.embed_tokens(torch.from_numpy(ids)).numpy(), atol=tol)
        for i, (stage, layer) in enumerate(zip(m.stages.layers, base.layers, strict=True)):
            x = rng.standard_normal((n, d)).astype(np.float32)
            q, k, v = r.run(stage.pre, hidden=x)
            xn = layer.input_layernorm(torch.from_numpy(x))
            attn = layer.self_attn
            np.testing.assert_allclose(q, attn.q_proj(xn).reshape(n, h, hd).transpose(0, 1).numpy(), atol=tol)
            np.testing.assert_allclose(k, attn.k_proj(xn).reshape(n, kvh, hd).transpose(0, 1).numpy(), atol=tol)
            np.testing.assert_allclose(v, attn.v_proj(xn).reshape(n, kvh, hd).transpose(0, 1).numpy(), atol=tol)
            a = rng.standard_normal((n, h * hd)).astype(np.float32)
            (out,) = r.run(stage.post, hidden=x, attn=a)
            mid = torch.from_numpy(x) + attn.o_proj(torch.from_numpy(a))
            ref = mid + layer.mlp(layer.post_attention_layernorm(mid))
            np.testing.assert_allclose(out, ref.numpy(), atol=tol, err_msg=f"layer {i} post")
        x = rng.standard_normal((n, d)).astype(np.float32)
        (logits,) = r.run(m.stages.head, hidden=x)
        np.testing.assert_allclose(logits, lm.lm_head(base.norm(torch.from_numpy(x))).numpy(), atol=tol)
        if vm is not None:
            px = rng.uniform(-1, 1, (2, 3, *m.vision.image_size)).astype(np.float32)
            (fe,) = r.run(m.stages.vision, pixel_values=px)
            assert fe.shape == (2, m.vision.tokens_per_frame, d)
            np.testing.assert_allclose(fe, vm.encode_frames(torch.from_numpy(px)).numpy(), atol=tol)
    # the exporter's own parity report is in the manifest, one entry per stage
    errors = m.notes["parity"]["max_abs_error"]
    assert set(errors) >= {"embed", "head", "layers.0.pre", "layers.0.post"}
    assert max(errors.values()) < 1e-4


@pytest.mark.parametrize("name", FAMILIES)
def test_bundle_reproduces_model_logits(request: pytest.FixtureRequest, name: str) -> None:
    """Stages + host attention with the manifest's RoPE data == the PyTorch model's forward."""
    src, bundle = _source_and_bundle(request, name)
    vm, lm = _torch_model(src)
    r = BundleRunner(bundle)
    m = r.m
    ids = np.array([*m.prompt.system_ids, *range(20, 40)], dtype=np.int64)
    with torch.no_grad():
        if vm is None:
            ref = lm(torch.from_numpy(ids)[None]).logits[0].numpy()
            got = r.logits(ids)
        else:
            ph = m.tokens.frame_placeholder
            ids = np.array([*m.prompt.system_ids, *[ph] * 10, m.tokens.frame_interval, *[ph] * 10, 30], dtype=np.int64)
            px = np.random.default_rng(0).uniform(-1, 1, (2, 3, *m.vision.image_size)).astype(np.float32)
            ref = vm(torch.from_numpy(ids)[None], pixel_values=torch.from_numpy(px)).logits[0].numpy()
            (fe,) = r.run(m.stages.vision, pixel_values=px)
            got = r.logits(ids, fe.reshape(-1, m.text.hidden_size))
    np.testing.assert_allclose(got, ref, atol=1e-4)
    assert (got.argmax(-1) == ref.argmax(-1)).all()


def test_manifest_describes_the_models(
    tiny_videollm_bundle: Path, tiny_llama_bundle: Path, tiny_qwen2_bundle: Path
) -> None:
    v = load_manifest(tiny_videollm_bundle)
    assert v.family == "videollm" and v.dtype == "fp32"
    assert v.vision is not None and v.vision.tokens_per_frame == 10 and v.vision.image_size == (48, 48)
    assert v.stages.vision is not None and v.stages.vision.outputs[0].shape == ("F", 10, 64)
    assert v.tokens.frame_placeholder is not None and v.tokens.frame_interval is not None
    assert (v.text.num_heads, v.text.num_kv_heads, v.text.head_dim) == (4, 2, 16)
    llama, qwen = load_manifest(tiny_llama_bundle), load_manifest(tiny_qwen2_bundle)
    assert llama.family == qwen.family == "llama"
    assert llama.text.rope.scaling_type == "llama3" and llama.text.rope.theta == 50000.0
    assert qwen.text.rope.scaling_type == "default" and qwen.vision is None
    # RoPE inv_freq comes from the model's rotary module (llama3 scaling applied)
    from transformers import AutoConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    cfg = AutoConfig.from_pretrained(str(Path(llama.source)))
    np.testing.assert_allclose(llama.text.rope.inv_freq, LlamaRotaryEmbedding(cfg).inv_freq.numpy(), rtol=1e-6)
    assert llama.stages.layers[0].pre.outputs[0].shape == (4, "n", 16)


def test_prompt_layout_from_chat_template(tiny_llama_bundle: Path) -> None:
    from tokenizers import Tokenizer

    m = load_manifest(tiny_llama_bundle)
    tok = Tokenizer.from_file(str(tiny_llama_bundle / m.tokenizer))
    dec = lambda ids: tok.decode(list(ids), skip_special_tokens=False)  # noqa: E731
    assert m.notes["prompt_source"] == "chat_template"
    assert dec(m.prompt.system_ids) == "<|im_start|> system you are a tiny model <|im_end|>"
    assert dec(m.prompt.user_prefix_ids) == "<|im_start|> user"
    assert dec(m.prompt.reply_prefix_ids) == "<|im_start|> assistant"
    assert m.tokens.end_of_turn == (tok.token_to_id("<|im_end|>"),)


# ---------------------------------------------------------------------------- errors


def test_family_detection(tiny_videollm_checkpoint: Path, tiny_qwen2_hf: Path, tmp_path: Path) -> None:
    assert detect_family(tiny_videollm_checkpoint) == "videollm"
    assert detect_family(tiny_qwen2_hf) == "llama"
    assert get_family("SmolLM2").name == "llama"
    # a GGUF file is recognised by its magic bytes, whatever its name
    import gguf

    w = gguf.GGUFWriter(str(tmp_path / "weights.bin"), "qwen2")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    assert detect_family(tmp_path / "weights.bin") == "llama"
    assert resolve_source(tmp_path).gguf_file == tmp_path / "weights.bin"  # a folder with one GGUF file
    (tmp_path / "fake.gguf").write_bytes(b"not a gguf file")
    with pytest.raises(ExportError, match="neither a model folder nor a GGUF"):
        detect_family(tmp_path / "fake.gguf")


def test_unknown_family_and_bad_sources(tiny_llama_hf: Path, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="unknown model family"):
        export_bundle(tiny_llama_hf, tmp_path / "b", family="nope")
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(ExportError, match="unknown model family or model_type 'bert'"):
        export_bundle(bert, tmp_path / "b")
    with pytest.raises(ExportError, match="not found"):
        export_bundle(tmp_path / "missing", tmp_path / "b")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ExportError, match="not a model folder"):
        export_bundle(tmp_path / "empty", tmp_path / "b")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{")
    with pytest.raises(ExportError, match="cannot read"):
        export_bundle(tmp_path / "broken", tmp_path / "b")
    with pytest.raises(ExportError, match="cannot load the vrex_videollm checkpoint"):
        export_bundle(tiny_llama_hf, tmp_path / "b", family="videollm")
    with pytest.raises(ExportError, match="unknown dtype"):
        export_bundle(tiny_llama_hf, tmp_path / "b", dtype="int3")
    assert not (tmp_path / "b").exists()


def _leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


def test_export_is_atomic(tiny_llama_hf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    with pytest.raises(ExportError, match="already exists"):
        export_bundle(tiny_llama_hf, out)
    assert (out / "mine.txt").read_text() == "keep me"

    from vrex_edge.export import pipeline

    def fail(*a, **k):
        raise ExportError("stage head does not match PyTorch")

    monkeypatch.setattr(pipeline, "verify_stage", fail)
    with pytest.raises(ExportError, match="does not match"):
        export_bundle(tiny_llama_hf, out, force=True)
    assert (out / "mine.txt").read_text() == "keep me"  # the old bundle survives a failed --force
    with pytest.raises(ExportError):
        export_bundle(tiny_llama_hf, tmp_path / "new")
    assert not (tmp_path / "new").exists() and _leftovers(tmp_path) == []
    monkeypatch.undo()

    report = export_bundle(tiny_llama_hf, out, force=True)
    assert isinstance(report, ExportReport) and report.out == out
    assert not (out / "mine.txt").exists() and load_manifest(out).family == "llama"
    assert _leftovers(tmp_path) == []
    assert report.sizes["manifest.json"] > 0 and report.total_bytes == sum(report.sizes.values())


def test_progress_callback_reports_each_stage(tiny_qwen2_hf: Path, tmp_path: Path) -> None:
    msgs: list[str] = []
    report = export_bundle(tiny_qwen2_hf, tmp_path / "b", progress=msgs.append)
    assert any(s.startswith("loading llama model") for s in msgs)
    for key in report.errors:
        assert any(s.startswith(f"verified {key}:") for s in msgs)
    assert set(report.errors) == {"embed", "head"} | {f"layers.{i}.{p}" for i in range(2) for p in ("pre", "post")}


# ---------------------------------------------------------------------------- dtypes


@pytest.mark.parametrize("dtype", ["fp16", "int8"])
def test_reduced_dtypes_stay_close(tiny_llama_hf: Path, tiny_llama_bundle: Path, tmp_path: Path, dtype: str) -> None:
    import onnx

    report = export_bundle(tiny_llama_hf, tmp_path / dtype, dtype=dtype)
    m = load_manifest(report.out)
    assert m.dtype == dtype and m.notes["parity"]["max_abs_error"] == report.errors
    for spec in (m.stages.embed, m.stages.head, *[s for ls in m.stages.layers for s in (ls.pre, ls.post)]):
        graph = onnx.load(str(report.out / spec.file)).graph
        io = [*graph.input, *graph.output]
        assert all(t.type.tensor_type.elem_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.INT64) for t in io)
    post = onnx.load(str(report.out / m.stages.layers[0].post.file)).graph
    if dtype == "fp16":
        assert onnx.TensorProto.FLOAT16 in {i.data_type for i in post.initializer}
    else:
        assert sum(n.op_type == "MatMulNBits" for n in post.node) == 4  # o, gate, up, down projections
    embed = onnx.load(str(report.out / m.stages.embed.file)).graph
    assert {i.data_type for i in embed.initializer if len(i.dims) == 2} == {onnx.TensorProto.FLOAT16}
    ids = np.arange(3, 30, dtype=np.int64)
    ref = BundleRunner(tiny_llama_bundle).logits(ids)
    got = BundleRunner(report.out).logits(ids)
    tol = {"fp16": 2e-3, "int8": 2e-2}[dtype] * (1 + np.abs(ref).max())
    assert np.abs(got - ref).max() < tol
    fp32_size = sum((tiny_llama_bundle / f).stat().st_size for f in m.files if f.startswith("stages/"))
    assert sum(v for k, v in report.sizes.items() if k.startswith("stages/")) < fp32_size


def test_copying_a_bundle_keeps_it_valid(tiny_qwen2_bundle: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(tiny_qwen2_bundle, tmp_path / "moved")
    assert load_manifest(copy).files == load_manifest(tiny_qwen2_bundle).files
