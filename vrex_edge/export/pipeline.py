"""Turn a family's LoadedModel into a bundle folder: one ONNX graph per stage, parity checks,
tokenizer, and manifest.json (written only through `vrex_edge.bundle`)."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vrex_edge.bundle import (
    LayerStages,
    Manifest,
    RopeSpec,
    Stages,
    StageSpec,
    TensorSpec,
    TextSpec,
    sha256_file,
    write_manifest,
)
from vrex_edge.errors import ExportError
from vrex_edge.export import onnx_io, precision, tables
from vrex_edge.export.registry import LoadedModel, first_line
from vrex_edge.export.stages import (
    AttnDims,
    EmbedStage,
    HeadStage,
    PostAttention,
    PreAttention,
    attn_dims,
    decoder_parts,
    rotary_module,
)

TOKENIZER_FILE = "tokenizer.json"
EXAMPLE_N = 3  # trace length: not 1, so no axis is specialised to a singleton
VERIFY_N = (1, 6)  # parity runs at other lengths prove the n axis is really dynamic


@dataclass(frozen=True)
class Direct:
    """A stage written from its weights without tracing (`vrex_edge.export.tables`)."""

    write: Callable[[Path], None]  # graph path -> the graph in the bundle's dtype, weights in `<path>.data`
    trials: Callable[[list[dict[str, np.ndarray]]], list[onnx_io.Trial]]  # the torch modules' outputs


@dataclass(frozen=True)
class StagePlan:
    key: str  # "embed", "layers.3.pre", ...
    file: str
    module: nn.Module
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    make_inputs: Callable[[int, np.random.Generator], dict[str, np.ndarray]]  # (n or F, rng) -> feeds
    direct: Direct | None = None  # None: traced with torch.onnx.export, then converted to the dtype

    @property
    def spec(self) -> StageSpec:
        return StageSpec(self.file, self.inputs, self.outputs)


def _f32(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


def _real(model: LoadedModel, module: nn.Module):  # a context with `module`'s weights in memory
    return model.weights.materialized(module) if model.weights is not None else contextlib.nullcontext()


def direct_embed(model: LoadedModel, embed: nn.Module, dtype: str) -> Direct | None:
    table = tables.embed_rows(embed, model.weights)
    if table is None:
        return None
    return Direct(lambda path: tables.write_embed(path, table, dtype), lambda ins: tables.embed_trials(table, ins))


def direct_head(model: LoadedModel, norm: nn.Module, lm_head: nn.Module, dtype: str) -> Direct | None:
    parts = tables.head_parts(norm, lm_head, model.weights) if dtype != "int4" else None  # HQQ fits whole matrices
    if parts is None:
        return None
    rows, eps = parts

    def write(path: Path) -> None:
        with _real(model, norm):
            gamma = norm.weight.detach().float().numpy().copy()  # [D]
        tables.write_head(path, gamma, eps, rows, dtype)

    def trials(inputs: list[dict[str, np.ndarray]]) -> list[onnx_io.Trial]:
        with _real(model, norm):
            return tables.head_trials(norm, rows, inputs)

    return Direct(write, trials)


def plan_stages(model: LoadedModel, dtype: str = "fp32") -> list[StagePlan]:
    """One plan per stage, in bundle order; the embedding and head are written directly where they can be."""
    lm = model.lm
    cfg = lm.config
    dims: AttnDims = attn_dims(cfg)
    embed, layers, norm, lm_head = decoder_parts(lm)
    d, vocab = int(cfg.hidden_size), int(embed.num_embeddings)
    h, kvh, hd = dims.num_heads, dims.num_kv_heads, dims.head_dim
    hid = TensorSpec("hidden", "float32", ("n", d))
    plans: list[StagePlan] = []
    if model.vision is not None:
        vs = model.vision_spec
        assert vs is not None, "a vision module needs a VisionSpec"
        ih, iw = vs.image_size
        plans.append(
            StagePlan(
                "vision",
                "stages/vision.onnx",
                model.vision,
                (TensorSpec("pixel_values", "float32", ("F", 3, ih, iw)),),
                (TensorSpec("frame_embeds", "float32", ("F", vs.tokens_per_frame, d)),),
                lambda f, rng: {"pixel_values": rng.uniform(-1, 1, (f, 3, ih, iw)).astype(np.float32)},
            )
        )
    plans.append(
        StagePlan(
            "embed",
            "stages/embed.onnx",
            EmbedStage(embed),
            (TensorSpec("input_ids", "int64", ("n",)),),
            (TensorSpec("embeds", "float32", ("n", d)),),
            lambda n, rng: {"input_ids": rng.integers(0, vocab, (n,), dtype=np.int64)},
            direct_embed(model, embed, dtype),
        )
    )
    qkv = (
        TensorSpec("q", "float32", (h, "n", hd)),
        TensorSpec("k", "float32", (kvh, "n", hd)),
        TensorSpec("v", "float32", (kvh, "n", hd)),
    )
    for i, layer in enumerate(layers):
        plans.append(
            StagePlan(
                f"layers.{i}.pre",
                f"stages/layer{i:02d}_pre.onnx",
                PreAttention(layer, dims),
                (hid,),
                qkv,
                lambda n, rng: {"hidden": _f32(rng, n, d)},
            )
        )
        plans.append(
            StagePlan(
                f"layers.{i}.post",
                f"stages/layer{i:02d}_post.onnx",
                PostAttention(layer),
                (hid, TensorSpec("attn", "float32", ("n", h * hd))),
                (TensorSpec("hidden_out", "float32", ("n", d)),),
                lambda n, rng: {"hidden": _f32(rng, n, d), "attn": _f32(rng, n, h * hd)},
            )
        )
    plans.append(
        StagePlan(
            "head",
            "stages/head.onnx",
            HeadStage(norm, lm_head),
            (hid,),
            (TensorSpec("logits", "float32", ("n", vocab)),),
            lambda n, rng: {"hidden": _f32(rng, n, d)},
            direct_head(model, norm, lm_head, dtype),
        )
    )
    return plans


def _dynamic_axes(plan: StagePlan) -> dict[str, dict[int, str]]:
    return {
        t.name: {ax: s for ax, s in enumerate(t.shape) if isinstance(s, str)} for t in (*plan.inputs, *plan.outputs)
    }


def export_stage(plan: StagePlan, root: Path, rng: np.random.Generator) -> None:
    """Write the stage's fp32 graph (its weights must be real)."""
    path = root / plan.file
    path.parent.mkdir(parents=True, exist_ok=True)
    feeds = plan.make_inputs(2 if plan.key == "vision" else EXAMPLE_N, rng)
    example = tuple(torch.from_numpy(v) for v in feeds.values())
    try:
        onnx_io.export_onnx(
            plan.module,
            example,
            path,
            [t.name for t in plan.inputs],
            [t.name for t in plan.outputs],
            _dynamic_axes(plan),
        )
    except Exception as e:  # the tracer and the ONNX converter raise many kinds of errors
        raise ExportError(f"stage {plan.key} cannot be exported to ONNX: {first_line(e)}") from e


def stage_trials(plan: StagePlan, rng: np.random.Generator) -> list[onnx_io.Trial]:
    """Random inputs at several lengths and PyTorch's outputs on them (a traced stage's weights must be real)."""
    lengths = (1, 3) if plan.key == "vision" else VERIFY_N
    inputs = [plan.make_inputs(n, rng) for n in lengths]
    if plan.direct is not None:
        return plan.direct.trials(inputs)
    return onnx_io.reference_trials(plan.module, inputs)


def verify_stage(plan: StagePlan, root: Path, dtype: str, trials: list[onnx_io.Trial]) -> tuple[float, float]:
    """(max abs error, max |reference|) of the written stage vs PyTorch's outputs; raises above tolerance."""
    err, scale = onnx_io.compare(root / plan.file, trials, [t.name for t in plan.outputs])
    onnx_io.check_error(plan.key, err, scale, dtype)
    return err, scale


def rope_spec(lm: nn.Module) -> RopeSpec:
    rot = rotary_module(lm)
    cfg = lm.config
    params = getattr(cfg, "rope_parameters", None) or {}
    theta = params.get("rope_theta", getattr(cfg, "rope_theta", 10000.0))
    return RopeSpec(
        theta=float(theta),
        inv_freq=tuple(float(x) for x in rot.inv_freq.detach().float().tolist()),
        attention_scaling=float(getattr(rot, "attention_scaling", 1.0)),
        scaling_type=getattr(rot, "rope_type", None) or params.get("rope_type"),
    )


def text_spec(lm: nn.Module) -> TextSpec:
    cfg = lm.config
    dims = attn_dims(cfg)
    embed, layers, norm, _ = decoder_parts(lm)
    return TextSpec(
        num_layers=len(layers),
        hidden_size=int(cfg.hidden_size),
        num_heads=dims.num_heads,
        num_kv_heads=dims.num_kv_heads,
        head_dim=dims.head_dim,
        vocab_size=int(embed.num_embeddings),
        max_positions=int(cfg.max_position_embeddings),
        rms_norm_eps=float(cfg.rms_norm_eps),
        rope=rope_spec(lm),
    )


def build_manifest(
    model: LoadedModel,
    plans: list[StagePlan],
    root: Path,
    *,
    family: str,
    dtype: str,
    source: str,
    errors: dict[str, float],
    scales: dict[str, float],
) -> Manifest:
    specs = {p.key: p.spec for p in plans}
    n_layers = sum(1 for k in specs if k.endswith(".pre"))
    stages = Stages(
        embed=specs["embed"],
        layers=tuple(LayerStages(specs[f"layers.{i}.pre"], specs[f"layers.{i}.post"]) for i in range(n_layers)),
        head=specs["head"],
        vision=specs.get("vision"),
    )
    files = {p.file: sha256_file(root / p.file) for p in plans}
    for p in plans:  # weights of graphs past 2 GB
        data = onnx_io.data_file(root / p.file)
        if data.is_file():
            files[str(data.relative_to(root))] = sha256_file(data)
    files[TOKENIZER_FILE] = sha256_file(root / TOKENIZER_FILE)
    notes = dict(model.notes)
    notes["parity"] = {
        "max_abs_error": errors,
        "max_abs_reference": scales,
        "inputs": "random",
        "tolerance": f"{onnx_io.TOLERANCE[dtype]} * (1 + max_abs_reference)",
    }
    notes["versions"] = {"torch": torch.__version__, "opset": onnx_io.OPSET}
    return Manifest(
        name=model.name,
        family=family,
        dtype=dtype,
        text=text_spec(model.lm),
        tokens=model.tokens,
        prompt=model.prompt,
        stages=stages,
        tokenizer=TOKENIZER_FILE,
        files=files,
        vision=model.vision_spec,
        source=source,
        notes=notes,
    )


def write_bundle(
    model: LoadedModel,
    root: Path,
    *,
    family: str,
    dtype: str,
    source: str,
    verify: bool,
    progress: Callable[[str], None],
) -> dict[str, float]:
    """Write every stage, the tokenizer and the manifest into `root`; returns per-stage errors.

    One stage at a time: its weights are read (when the model is lazy), the fp32 graph and
    PyTorch's outputs on the check inputs are made, the weights are freed, and the graph is
    converted to `dtype` and checked, so a stage's torch weights and its ONNX copies meet only once.
    The embedding and head are written in `dtype` straight from the weights, a block of rows at a time."""
    rng = np.random.default_rng(0)
    plans = plan_stages(model, dtype)
    errors: dict[str, float] = {}
    scales: dict[str, float] = {}
    for i, plan in enumerate(plans, 1):
        progress(f"exporting {plan.key} ({i}/{len(plans)})")
        if plan.direct is not None:
            (root / plan.file).parent.mkdir(parents=True, exist_ok=True)
            plan.direct.write(root / plan.file)
            trials = stage_trials(plan, rng) if verify else []
        else:
            with _real(model, plan.module):
                export_stage(plan, root, rng)
                trials = stage_trials(plan, rng) if verify else []
            gc.collect()
            precision.convert(root / plan.file, dtype)
        if verify:
            errors[plan.key], scales[plan.key] = verify_stage(plan, root, dtype, trials)
            progress(
                f"verified {plan.key}: max abs error {errors[plan.key]:.2e} (outputs up to {scales[plan.key]:.3g})"
            )
        del trials
        gc.collect()
    (root / TOKENIZER_FILE).write_text(model.tokenizer_json, encoding="utf-8")
    write_manifest(
        root,
        build_manifest(model, plans, root, family=family, dtype=dtype, source=source, errors=errors, scales=scales),
    )
    return errors
