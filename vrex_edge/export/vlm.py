"""Helpers shared by the vision-language families: a text LM view over a VLM's decoder, and
hub-or-local path resolution for the parts a checkpoint names."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vrex_edge.errors import ExportError


def causal_lm_view(text_config: Any, decoder: Any, lm_head: Any) -> Any:
    """An HF *ForCausalLM (Llama layout) whose decoder and LM head are the VLM's own modules.

    The wrapper is built on the meta device, so no second copy of the weights is allocated."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        lm = AutoModelForCausalLM.from_config(text_config)
    lm.model = decoder
    lm.lm_head = lm_head
    return lm.float().eval()


def local_path(name_or_path: str, *, what: str, relative_to: Path | None = None) -> Path:
    """A local folder for `name_or_path`: a path (absolute, or relative to `relative_to`), or a
    Hub id already in the Hugging Face cache (downloaded if the Hub can be reached)."""
    candidates = [Path(name_or_path).expanduser()]
    if relative_to is not None:
        candidates.append(relative_to / name_or_path)
    for c in candidates:
        if c.is_dir():
            return c
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name_or_path))
    except Exception as e:  # offline, unknown repo, gated model, ...
        raise ExportError(
            f"{what} '{name_or_path}' is not a local folder and could not be fetched from "
            f"the Hugging Face Hub ({type(e).__name__}); download it first"
        ) from None


def text_ids(tok: Any, text: str) -> tuple[int, ...]:
    """Token ids of `text` without added BOS/EOS (special tokens written in the text are kept)."""
    return tuple(int(i) for i in tok.encode(text, add_special_tokens=False)) if text else ()


def token_id(tok: Any, token: str, *, what: str) -> int:
    i = tok.convert_tokens_to_ids(token)
    if i is None or (tok.unk_token_id is not None and i == tok.unk_token_id and token != tok.unk_token):
        raise ExportError(f"the tokenizer has no {what} token '{token}'")
    return int(i)


def image_norm(path: Path, default: float = 0.5) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) per RGB channel from a folder's video/image preprocessor config (SigLIP's 0.5 if absent)."""
    import json

    for name in ("video_preprocessor_config.json", "preprocessor_config.json"):
        f = path / name
        if f.is_file():
            cfg = json.loads(f.read_text(encoding="utf-8"))
            if "image_mean" in cfg and "image_std" in cfg:
                return tuple(float(x) for x in cfg["image_mean"]), tuple(float(x) for x in cfg["image_std"])
    return (default,) * 3, (default,) * 3


def load_hf_vlm(source: Any) -> tuple[Any, Any, Any]:
    """(model with meta parameters in fp32 eval mode, fast tokenizer, its LazyWeights) of an HF
    image-text-to-text folder; weights are read from the safetensors files one stage at a time."""
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoTokenizer

    from vrex_edge.export.hf import quiet
    from vrex_edge.export.lazy import LazyWeights, empty_model, hf_folder
    from vrex_edge.export.registry import first_line

    try:
        with quiet():
            config = AutoConfig.from_pretrained(str(source.path))
            model = empty_model(lambda: AutoModelForImageTextToText.from_config(config))
            tok = AutoTokenizer.from_pretrained(str(source.path), use_fast=True)
    except ImportError as e:
        raise ExportError(
            f"loading this model needs an optional package: {e}; pip install 'vrex-edge[export]'"
        ) from None
    except (OSError, ValueError, KeyError) as e:
        raise ExportError(f"cannot load a model from {source.path}: {first_line(e)}") from None
    if not getattr(tok, "is_fast", False):
        raise ExportError(f"{source.path} has no fast tokenizer (tokenizer.json); the bundle needs one")
    files = hf_folder(model, source.path)
    missing = [n for n, _ in model.named_parameters() if n not in files]
    if missing:
        raise ExportError(f"{source.path}: the checkpoint has no weights for {missing[0]} ({len(missing)} missing)")
    weights = LazyWeights()
    weights.attach(model, files.get, rows=files.get_rows)
    return model, tok, weights
