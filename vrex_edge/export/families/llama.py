"""Llama/Qwen2-architecture text LMs from a Hugging Face folder or a GGUF file."""

from __future__ import annotations

from typing import Any

from vrex_edge.errors import ExportError
from vrex_edge.export.hf import quiet
from vrex_edge.export.prompt import derive_prompt
from vrex_edge.export.registry import Family, LoadedModel, Source, first_line, register

MODEL_TYPES = ("llama", "qwen2", "smollm2", "smollm")


def _from_pretrained(loader: Any, source: Source, **kw: Any) -> Any:
    if source.gguf_file is not None:
        kw["gguf_file"] = source.gguf_file.name
    with quiet():
        return loader.from_pretrained(str(source.path), **kw)


def _check_layout(lm: Any) -> None:
    layer = lm.model.layers[0]
    attn = getattr(layer, "self_attn", None)
    needed = ("q_proj", "k_proj", "v_proj", "o_proj")
    if attn is None or not all(hasattr(attn, n) for n in needed) or not hasattr(layer, "post_attention_layernorm"):
        raise ExportError(
            f"{type(lm).__name__} does not have a Llama-style decoder layer; it cannot use the llama family"
        )


def load(source: Source) -> LoadedModel:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

    try:
        lm = _from_pretrained(AutoModelForCausalLM, source, dtype=torch.float32)
        tok_file = source.path / "tokenizer.json"
        if source.kind == "hf" and tok_file.is_file():  # exactly what the model ships, whatever its model_type
            tok = _from_pretrained(PreTrainedTokenizerFast, source)
        else:
            tok = _from_pretrained(AutoTokenizer, source)
    except ImportError as e:  # GGUF needs `gguf` and `accelerate`
        raise ExportError(
            f"loading this model needs an optional package: {e}; pip install 'vrex-edge[export]'"
        ) from None
    except (OSError, ValueError, KeyError) as e:
        raise ExportError(f"cannot load a model from {source.gguf_file or source.path}: {first_line(e)}") from None
    quantizer = getattr(lm, "hf_quantizer", None)
    if quantizer is not None:  # GGUF weights are dequantised at load: detach the quantizer so the
        quantizer.remove_quantization_config(lm)  # model behaves (and saves) as a plain fp32 model
    lm = lm.float().eval()
    _check_layout(lm)
    if not getattr(tok, "is_fast", False):
        raise ExportError(f"{source.path} has no fast tokenizer (tokenizer.json); the bundle needs one")
    tokenizer_json = (
        tok_file.read_text(encoding="utf-8")
        if source.kind == "hf" and tok_file.is_file()
        else tok.backend_tokenizer.to_str()
    )
    prompt, tokens, notes = derive_prompt(tok)
    name = source.gguf_file.stem if source.gguf_file is not None else source.path.name
    notes = {**notes, "architecture": type(lm).__name__, "source_format": source.kind}
    return LoadedModel(lm=lm, tokenizer_json=tokenizer_json, tokens=tokens, prompt=prompt, name=name, notes=notes)


FAMILY = register(Family("llama", MODEL_TYPES, load))
