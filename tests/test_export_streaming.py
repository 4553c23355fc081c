"""Streaming export: weights read per stage and freed, graphs past the protobuf limit written with
external data, and the real-size fixtures' tokenizers and configs (without writing their weights)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from vrex_edge.bundle import load_manifest
from vrex_edge.export import export_bundle

from .export_ref import BundleRunner


def test_external_data_bundle_loads_and_matches(
    tiny_qwen2_hf: Path, tiny_qwen2_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the external-data threshold lowered, every weighted graph keeps its tensors in
    <file>.data (as the 8B embedding and head do past 2 GB): hashed, loadable, same outputs."""
    from vrex_edge.export import onnx_io

    monkeypatch.setattr(onnx_io, "EXTERNAL_DATA_BYTES", 1000)
    for dtype in ("fp32", "int8"):
        out = export_bundle(tiny_qwen2_hf, tmp_path / dtype, dtype=dtype).out
        m = load_manifest(out)  # verifies every hash, the .data files' included
        data = sorted(f for f in m.files if f.endswith(".onnx.data"))
        assert f"{m.stages.head.file}.data" in data and f"{m.stages.layers[0].post.file}.data" in data
        assert not list((out / "stages").glob(".*"))  # no leftover export folders
        ids = np.array(list(m.prompt.system_ids) + list(m.prompt.reply_prefix_ids))
        a, b = BundleRunner(tiny_qwen2_bundle).logits(ids)[-1], BundleRunner(out).logits(ids)[-1]
        tol = 1e-5 if dtype == "fp32" else 0.1
        assert np.abs(a - b).max() < tol * (1 + np.abs(a).max()), dtype


def test_lazy_weights_materialise_one_stage_and_free_it(tmp_path: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText

    from vrex_edge.export.lazy import LazyWeights, SafetensorsFolder, empty_model
    from vrex_edge.testing.tiny_vlm import make_tiny_smolvlm

    src = make_tiny_smolvlm(tmp_path / "smol")
    config = AutoConfig.from_pretrained(str(src))
    model = empty_model(lambda: AutoModelForImageTextToText.from_config(config))
    assert all(p.is_meta for p in model.parameters())
    files = SafetensorsFolder(src)
    weights = LazyWeights()
    weights.attach(model, files.get)
    layer = model.model.text_model.layers[1]
    with weights.materialized(layer):
        assert not any(p.is_meta for p in layer.parameters())
        assert all(p.is_meta for p in model.model.text_model.layers[0].parameters())
        want = files.get("model.text_model.layers.1.mlp.up_proj.weight")
        torch.testing.assert_close(layer.mlp.up_proj.weight, want.float())
    assert all(p.is_meta for p in layer.parameters())


def test_lora_lookup_merges_as_peft(tmp_path: Path) -> None:
    """The streaming merge (base + alpha/r * B @ A) equals PEFT's merge_and_unload on the tiny adapter,
    for whole weights and for row blocks (the LM head is read a block of rows at a time)."""
    import torch
    from peft import PeftModel
    from transformers import AutoConfig

    from vrex_edge.export.families.videollm_online import LoraLookup, live_lm_class
    from vrex_edge.export.lazy import SafetensorsFolder
    from vrex_edge.testing.tiny_vlm import make_tiny_videollm_online

    ad = make_tiny_videollm_online(tmp_path / "vlo")
    acfg = json.loads((ad / "adapter_config.json").read_text())
    base = Path(acfg["base_model_name_or_path"])
    cfg = AutoConfig.from_pretrained(str(base))
    cfg.vision_hidden_size = 32
    lm = live_lm_class().from_pretrained(str(base), config=cfg, dtype=torch.float32)
    merged = PeftModel.from_pretrained(lm, str(ad)).merge_and_unload().state_dict()
    p = "base_model.model."
    adapter = SafetensorsFolder(
        ad, files=("adapter_model.safetensors",), rename=lambda k: k[len(p) :] if k.startswith(p) else None
    )
    lookup = LoraLookup(SafetensorsFolder(base), adapter, acfg)
    for name in (
        "model.layers.1.self_attn.q_proj.weight",
        "model.layers.0.mlp.down_proj.weight",
        "lm_head.weight",
        "connector.2.weight",
        "model.norm.weight",
    ):
        torch.testing.assert_close(lookup(name), merged[name], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(lookup.rows(name, 1, 3), merged[name][1:3], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["smolvlm2-256m", "smolvlm2-2.2b", "llava-onevision-0.5b"])
def test_fixture_configs_build_the_published_models(name: str, tmp_path: Path) -> None:
    """The fixtures' configs give the published parameter counts and token ids (no weights written)."""
    from transformers import AutoConfig, AutoModelForImageTextToText

    from vrex_edge.export.lazy import empty_model
    from vrex_edge.testing import checkpoints as c

    if name.startswith("smolvlm2"):
        s = c.SMOLVLM2[name]
        cfg, params, image = c._smolvlm_config(dict(s["text"]), dict(s["vision"]), s["scale"]), s["params"], 49190
    else:
        cfg, params, image = c.LLAVA_OV_CONFIG, "0.9B", 151646
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    model = empty_model(lambda: AutoModelForImageTextToText.from_config(AutoConfig.from_pretrained(str(tmp_path))))
    n = sum(p.numel() for p in model.parameters())
    published = float(params.rstrip("MB")) * (1e6 if params.endswith("M") else 1e9)
    assert abs(n - published) / published < 0.03, n
    assert model.config.image_token_id == image


def test_synthetic_tokenizer_has_the_published_ids() -> None:
    from vrex_edge.testing.checkpoints import _llama3_specials, _smolvlm_specials
    from vrex_edge.testing.weights import synthetic_tokenizer

    sp = _smolvlm_specials()
    tok = synthetic_tokenizer(49280 - len(sp), sp, words=(" what",))
    assert tok.get_vocab_size() == 49280
    assert [tok.token_to_id(t) for t in ("<|im_start|>", "<global-img>", "<image>", "<end_of_utterance>")] == [
        1,
        49152,
        49190,
        49279,
    ]
    ids = tok.encode("<|im_start|>User: what?<end_of_utterance>").ids
    assert ids[0] == 1 and ids[-1] == 49279 and tok.decode(ids, skip_special_tokens=True) == "User: what?"
    sp = _llama3_specials()
    tok = synthetic_tokenizer(128000, sp)
    assert tok.get_vocab_size() == 128256 and tok.token_to_id("<|eot_id|>") == 128009
    assert tok.token_to_id("<|begin_of_text|>") == 128000 and len(tok.encode(",").ids) == 1


@pytest.mark.parametrize("family", ["smolvlm", "llava-onevision"])  # untied head / head tied to the embedding
def test_direct_embed_and_head_match_the_traced_stages(
    family: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The embedding and head written from the weights in blocks of rows (several blocks here) give the
    outputs of the traced-and-converted stages, the int8 head the same quantised weights bit for bit,
    and both match the torch modules."""
    import dataclasses

    import onnx
    from onnx import numpy_helper

    from vrex_edge.export import onnx_io, pipeline, precision, tables
    from vrex_edge.export.registry import get_family, resolve_source
    from vrex_edge.testing.tiny_vlm import make_tiny_llava_onevision, make_tiny_smolvlm

    monkeypatch.setattr(tables, "BLOCK_ROWS", 37)  # a vocabulary of hundreds: many blocks, a ragged last one
    make = make_tiny_smolvlm if family == "smolvlm" else make_tiny_llava_onevision
    model = get_family(family).load(resolve_source(make(tmp_path / "src")))
    rng = np.random.default_rng(0)
    for dtype in ("fp32", "fp16", "int8"):
        plans = {p.key: p for p in pipeline.plan_stages(model, dtype) if p.key in ("embed", "head")}
        for key, plan in plans.items():
            assert plan.direct is not None, key
            direct, traced = tmp_path / dtype / f"{key}.onnx", tmp_path / dtype / "traced" / plan.file
            direct.parent.mkdir(parents=True, exist_ok=True)
            plan.direct.write(direct)
            with model.weights.materialized(plan.module):
                pipeline.export_stage(dataclasses.replace(plan, direct=None), tmp_path / dtype / "traced", rng)
                inputs = [plan.make_inputs(n, rng) for n in (1, 7)]
                want = onnx_io.reference_trials(plan.module, inputs)  # the torch modules
            precision.convert(traced, dtype)
            assert onnx_io.data_file(direct).is_file()
            names = [t.name for t in plan.outputs]
            for (feeds, ref), (_, from_rows) in zip(want, plan.direct.trials(inputs), strict=True):
                np.testing.assert_allclose(from_rows[0], ref[0], rtol=1e-5, atol=1e-6)  # the check's reference
                a = onnx_io.ort_session(direct).run(names, feeds)[0]
                b = onnx_io.ort_session(traced).run(names, feeds)[0]
                np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * (1 + np.abs(b).max()))
                limit = onnx_io.TOLERANCE[dtype] * (1 + np.abs(ref[0]).max())
                assert np.abs(a - ref[0]).max() <= limit, (key, dtype)
            if key == "head" and dtype == "int8":
                got = {t.name: t for t in onnx.load(str(direct)).graph.initializer}
                ref_inits = onnx.load(str(traced)).graph.initializer
                q8 = [numpy_helper.to_array(t) for t in ref_inits if t.name.endswith("_Q8")]
                sc = [numpy_helper.to_array(t) for t in ref_inits if t.name.endswith("_scales")]
                assert len(q8) == len(sc) == 1
                np.testing.assert_array_equal(
                    numpy_helper.to_array(got["lm_head.weight_Q8"], str(direct.parent)), q8[0]
                )
                np.testing.assert_array_equal(
                    numpy_helper.to_array(got["lm_head.weight_scales"], str(direct.parent)),
                    sc[0].reshape(-1, q8[0].shape[1]),
                )
