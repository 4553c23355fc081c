"""VideoLLM-online (showlab/videollm-online, "live1+"): a PEFT checkpoint over Llama-3.

The checkpoint folder holds adapter_config.json + adapter_model.safetensors: LoRA on the
decoder's q/k/v/o/gate/up/down projections and lm_head, plus the 2-layer MLP `connector`
(saved whole through modules_to_save). The base LM is `base_model_name_or_path`; the vision
tower is `vision_pretrained` (google/siglip-large-patch16-384). Export merges the LoRA (W + alpha/r * B @ A,
read per stage, as PEFT merges it) and
builds the vision stage: SigLIP -> [pooler output, 3x3 average-pooled patch grid] ->
connector, 10 tokens per frame.

Stream layout (the demo's): "<bos>{system}\\n\\n[" then frames joined by "," (the
frame-interval token, whose probability after a frame decides silence, threshold 0.725); a
reply opens with "]\\nAssistant:" and closes with "<eos>\\n[" (back into the stream); a question is
"]\\nUser: {q}\\nAssistant:" (the chat template's add_stream_query_prompt + add_generation_prompt).
Frames are padded to a square with black, as the original's ffmpeg pads them.
"""

from __future__ import annotations

from typing import Any

from vrex_edge.bundle import PromptSpec, TokenSpec, VisionSpec
from vrex_edge.errors import ExportError
from vrex_edge.export.registry import Family, LoadedModel, Source, first_line, register

# Defaults of the live1+ training arguments; a base config.json saved from LiveLlamaConfig overrides them.
LIVE1_PLUS: dict[str, Any] = {
    "vision_pretrained": "google/siglip-large-patch16-384",
    "frame_resolution": 384,
    "frame_token_cls": True,
    "frame_token_pooled": [3, 3],
    "v_placeholder": "<v>",
    "frame_token_interval": ",",
    "vision_hidden_size": 1024,
}
SYSTEM_PROMPT = (
    "A multimodal AI assistant is helping users with some activities. Below is their conversation, "
    "interleaved with the list of video frames received by the assistant."
)
SPEAK_THRESHOLD = 0.725  # demo/inference.py's frame_token_interval_threshold
STREAM_OPEN, STREAM_CLOSE = "\n[", "]\n"
# The original tokenizes a question turn as one string; its reply prefix has no "]": the query closed the stream.
QUESTION_TEMPLATE = STREAM_CLOSE + "User: {question}\nAssistant:"
BLACK = (0, 0, 0)


def live_lm_class() -> type:
    """LlamaForCausalLM with VideoLLM-online's connector (same module names as the checkpoint)."""
    import torch
    from transformers import LlamaForCausalLM
    from transformers.activations import GELUActivation

    class LiveLlamaForCausalLM(LlamaForCausalLM):
        def __init__(self, config: Any):
            super().__init__(config)
            d_vis = int(getattr(config, "vision_hidden_size", LIVE1_PLUS["vision_hidden_size"]))
            self.connector = torch.nn.Sequential(
                torch.nn.Linear(d_vis, config.hidden_size, bias=True),
                GELUActivation(),
                torch.nn.Linear(config.hidden_size, config.hidden_size, bias=True),
            )

    return LiveLlamaForCausalLM


def live_settings(base_config: dict[str, Any]) -> dict[str, Any]:
    """The live1+ settings, with any LiveLlamaConfig field the base config.json carries."""
    return {k: v if base_config.get(k) is None else base_config[k] for k, v in LIVE1_PLUS.items()}


class LoraLookup:
    """Parameter name -> merged fp32 weights: the base weight plus scale * B @ A where the adapter has a
    LoRA for that Linear (PEFT's merge), or the adapter's own copy for its modules_to_save (the connector).

    `base` and `adapter` are SafetensorsFolders; adapter keys are read without their "base_model.model." prefix.
    Calling it reads a whole weight; `rows` reads rows start:stop (output channels) of one, merged the same way."""

    def __init__(self, base: Any, adapter: Any, adapter_config: dict[str, Any]):
        if (
            adapter_config.get("use_dora")
            or adapter_config.get("rank_pattern")
            or adapter_config.get("alpha_pattern")
            or adapter_config.get("fan_in_fan_out")
        ):
            raise ExportError(
                "this LoRA adapter uses DoRA, per-module ranks or fan_in_fan_out, which export does not merge"
            )
        r, alpha = int(adapter_config["r"]), float(adapter_config["lora_alpha"])
        self.scale = alpha / r**0.5 if adapter_config.get("use_rslora") else alpha / r
        self.base, self.adapter = base, adapter

    def __call__(self, name: str) -> Any:
        if name in self.adapter and name not in self.base:  # modules_to_save, saved whole
            return self.adapter.get(name).float()
        w = self.base.get(name).float()  # KeyError when absent: the caller tries the parameter's other names
        a, b = self._lora(name)
        if a is not None:
            w.addmm_(self.adapter.get(b).float(), self.adapter.get(a).float(), alpha=self.scale)  # [out, r] @ [r, in]
        return w

    def rows(self, name: str, start: int, stop: int) -> Any:
        if name in self.adapter and name not in self.base:
            return self.adapter.get_rows(name, start, stop).float()
        w = self.base.get_rows(name, start, stop).float()  # [rows, in]
        a, b = self._lora(name)
        if a is not None:
            w.addmm_(self.adapter.get_rows(b, start, stop).float(), self.adapter.get(a).float(), alpha=self.scale)
        return w

    def _lora(self, name: str) -> tuple[str | None, str | None]:
        mod = name.removesuffix(".weight")
        a, b = f"{mod}.lora_A.weight", f"{mod}.lora_B.weight"
        return (a, b) if name.endswith(".weight") and a in self.adapter else (None, None)


def load_merged(source: Source) -> tuple[Any, Any, dict[str, Any], Any]:
    """(LiveLlamaForCausalLM on the meta device, base tokenizer, live settings, LazyWeights that read
    each parameter with its LoRA merged) from an adapter folder."""
    import json

    from transformers import AutoConfig, AutoTokenizer

    from vrex_edge.export.hf import quiet
    from vrex_edge.export.lazy import LazyWeights, SafetensorsFolder, empty_model, hf_folder
    from vrex_edge.export.vlm import local_path

    base_name = source.config.get("base_model_name_or_path")
    if not base_name:
        raise ExportError(f"{source.path}/adapter_config.json has no base_model_name_or_path")
    if "connector" not in (source.config.get("modules_to_save") or ()):
        raise ExportError(f"{source.path}: the adapter does not save the connector (modules_to_save)")
    base = local_path(str(base_name), what="base model", relative_to=source.path)
    raw = json.loads((base / "config.json").read_text(encoding="utf-8"))
    settings = live_settings(raw)
    with quiet():
        config = AutoConfig.from_pretrained(str(base))
        config.vision_hidden_size = int(settings["vision_hidden_size"])
        lm = empty_model(lambda: live_lm_class()(config))
        tok = AutoTokenizer.from_pretrained(str(base), use_fast=True)
    files = [f for f in ("adapter_model.safetensors",) if (source.path / f).is_file()]
    if not files:
        raise ExportError(f"{source.path} has no adapter_model.safetensors")
    prefix = "base_model.model."
    adapter = SafetensorsFolder(
        source.path, files=tuple(files), rename=lambda k: k[len(prefix) :] if k.startswith(prefix) else None
    )
    if not any(k.startswith("connector.") for k in adapter.keys()):
        raise ExportError(f"{source.path}/adapter_model.safetensors has no connector weights")
    weights = LazyWeights()
    merged = LoraLookup(hf_folder(lm, base), adapter, source.config)
    weights.attach(lm, merged, rows=merged.rows)
    return lm, tok, settings, weights


def load_tower(vision_dir: Any, weights: Any) -> Any:
    """The SigLIP vision transformer of a SiglipModel (or SiglipVisionModel) folder, on the meta device,
    its weights attached to `weights`."""
    from transformers import AutoConfig, AutoModel

    from vrex_edge.export.hf import quiet
    from vrex_edge.export.lazy import empty_model, hf_folder

    with quiet():
        config = AutoConfig.from_pretrained(str(vision_dir))
        model = empty_model(lambda: AutoModel.from_config(config))
    files = hf_folder(model, vision_dir)
    weights.attach(model, files.get, rows=files.get_rows)
    return getattr(model, "vision_model", model).eval()  # SiglipModel -> its vision transformer


def pool_matrix(side: int, out: tuple[int, int]) -> Any:
    """[oh*ow, side*side] weights that average a side x side grid into adaptive_avg_pool2d's bins
    (a MatMul, so ONNX export needs no adaptive pooling op)."""
    import torch

    def bins(n_in: int, n_out: int) -> Any:
        m = torch.zeros(n_out, n_in)
        for i in range(n_out):
            a, b = (i * n_in) // n_out, -((-(i + 1) * n_in) // n_out)  # floor, ceil
            m[i, a:b] = 1.0 / (b - a)
        return m

    return torch.kron(bins(side, out[0]), bins(side, out[1]))  # rows: (oy, ox), cols: (y, x)


def encode_frames(vision: Any, connector: Any, pixel_values: Any, *, pool: Any, cls: bool) -> Any:
    """pixel_values [F, 3, H, W] -> frame tokens [F, cls + gh*gw, D] (live1+: SigLIP pooler output,
    then the patch grid average-pooled by `pool` [gh*gw, P])."""
    import torch

    out = vision(pixel_values=pixel_values)
    patches = out.last_hidden_state  # [F, P, C]
    parts = [torch.matmul(pool, patches)]  # [F, gh*gw, C]
    if cls:
        parts.insert(0, out.pooler_output[:, None, :])  # [F, 1, C]
    return connector(torch.cat(parts, dim=1))  # [F, T_v, D]


def load(source: Source) -> LoadedModel:
    from vrex_edge.export.stages import VisionStage
    from vrex_edge.export.vlm import local_path, text_ids, token_id

    if source.kind != "peft":
        raise ExportError(f"{source.path} is not a VideoLLM-online checkpoint (expected adapter_config.json)")
    try:
        lm, tok, s, weights = load_merged(source)
        vision_dir = local_path(str(s["vision_pretrained"]), what="vision tower", relative_to=source.path)
        tower = load_tower(vision_dir, weights)
    except (OSError, ValueError, KeyError) as e:
        raise ExportError(f"cannot load the VideoLLM-online checkpoint in {source.path}: {first_line(e)}") from None
    if not s["frame_token_interval"]:
        raise ExportError("this is a live1 checkpoint (no frame-interval token); only live1+ is supported")
    tok.add_special_tokens({"additional_special_tokens": [s["v_placeholder"]]})
    v_id = len(tok) - 1  # the original appends the placeholder after the whole vocabulary
    interval = token_id(tok, s["frame_token_interval"], what="frame-interval")
    eos = tok.eos_token_id
    if eos is None:
        raise ExportError("the base tokenizer has no EOS token")
    cls, pooled = bool(s["frame_token_cls"]), tuple(int(x) for x in s["frame_token_pooled"])
    res = int(s["frame_resolution"])
    connector = lm.connector
    side = int(tower.config.image_size) // int(tower.config.patch_size)  # patches per side
    pool = pool_matrix(side, pooled)  # [gh*gw, side*side]
    stage = VisionStage(tower, lambda px: encode_frames(tower, connector, px, pool=pool, cls=cls))
    stage.connector = connector  # registers the connector's weights with the stage
    system_text = (tok.bos_token or "") + SYSTEM_PROMPT + "\n" + STREAM_OPEN
    prompt = PromptSpec(
        system_ids=text_ids(tok, system_text),
        user_prefix_ids=text_ids(tok, STREAM_CLOSE + "User: "),
        user_suffix_ids=(),
        reply_prefix_ids=text_ids(tok, STREAM_CLOSE + "Assistant:"),
        reply_suffix_ids=(int(eos), *text_ids(tok, STREAM_OPEN)),
        speak_threshold=SPEAK_THRESHOLD,
        system_text=system_text,
        question_template=QUESTION_TEMPLATE,
    )
    tokens = TokenSpec(
        bos=tok.bos_token_id,
        end_of_turn=(int(eos),),
        frame_placeholder=v_id,
        frame_interval=interval,
        pad=tok.pad_token_id,
    )
    vision_spec = VisionSpec(
        image_size=(res, res),
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        tokens_per_frame=int(cls) + pooled[0] * pooled[1],
        resize="pad",
        pad_color=BLACK,
    )
    notes = {
        "architecture": "VideoLLM-online live1+ (SigLIP + MLP connector + Llama, LoRA merged)",
        "base_model": str(source.config.get("base_model_name_or_path")),
        "vision_tower": str(s["vision_pretrained"]),
        "lora": {
            "r": source.config.get("r"),
            "alpha": source.config.get("lora_alpha"),
            "target_modules": source.config.get("target_modules"),
        },
        "prompt_layout": "<bos>{system}\\n\\n[ frame (, frame)* ]\\nAssistant: reply<eos>\\n[ ... ; "
        "questions: ]\\nUser: {q}\\nAssistant:",
    }
    return LoadedModel(
        lm=lm,
        tokenizer_json=tok.backend_tokenizer.to_str(),
        tokens=tokens,
        prompt=prompt,
        name=source.path.name,
        vision=stage.eval(),
        vision_spec=vision_spec,
        notes=notes,
        weights=weights,
    )


FAMILY = register(Family("videollm-online", ("live_llama", "videollm_online"), load))
