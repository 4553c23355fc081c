"""Model families, looked up by `model_type` through an alias table.

A family is a module in `vrex_edge/export/families/` that calls `register(...)` at import;
adding a family is adding such a module. `detect_family` reads a Hugging Face folder's
config.json, or recognises a GGUF file by its magic bytes and reads its architecture.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vrex_edge.bundle import PromptSpec, TokenSpec, VisionSpec
from vrex_edge.errors import ExportError

GGUF_MAGIC = b"GGUF"
ADAPTER_CONFIG = "adapter_config.json"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class Source:
    """A resolved model source: a Hugging Face folder (config.json) or a GGUF file."""

    path: Path  # the folder holding the model (the GGUF file's folder for GGUF)
    kind: str  # "hf" | "gguf" | "peft" (an adapter folder; config is adapter_config.json)
    model_type: str
    config: dict[str, Any] = field(default_factory=dict)  # config.json (empty for GGUF)
    gguf_file: Path | None = None


@dataclass(frozen=True)
class LoadedModel:
    """What a family hands to the exporter: torch modules in fp32 eval mode plus bundle data."""

    lm: Any  # an HF *ForCausalLM with a Llama layout (embed_tokens, layers, norm, lm_head)
    tokenizer_json: str  # contents of a `tokenizers` tokenizer.json
    tokens: TokenSpec
    prompt: PromptSpec
    name: str
    vision: Any = None  # nn.Module whose forward maps pixel_values [F, 3, H, W] -> frame_embeds [F, T_v, D]
    vision_spec: VisionSpec | None = None
    notes: dict[str, Any] = field(default_factory=dict)
    weights: Any = None  # a LazyWeights when the modules' parameters are on the meta device (read per stage)


@dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple[str, ...]  # config.json model_type values (and GGUF architectures)
    load: Callable[[Source], LoadedModel]


_FAMILIES: dict[str, Family] = {}
_ALIASES: dict[str, str] = {}  # model_type -> family name
_discovered = False


def register(family: Family) -> Family:
    _FAMILIES[family.name] = family
    for mt in (family.name, *family.model_types):
        _ALIASES[mt.lower()] = family.name
    return family


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    import vrex_edge.export.families as pkg

    for info in pkgutil.iter_modules(pkg.__path__):
        importlib.import_module(f"{pkg.__name__}.{info.name}")
    _discovered = True


def families() -> dict[str, Family]:
    _discover()
    return dict(_FAMILIES)


def aliases() -> dict[str, str]:
    _discover()
    return dict(_ALIASES)


def get_family(name_or_model_type: str) -> Family:
    _discover()
    name = _ALIASES.get(name_or_model_type.lower())
    if name is None:
        known = ", ".join(sorted(_ALIASES))
        raise ExportError(f"unknown model family or model_type '{name_or_model_type}' (known: {known})")
    return _FAMILIES[name]


# ---------------------------------------------------------------------------- sources


def first_line(e: BaseException) -> str:
    """A one-line description of an exception, for ExportError messages."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def is_gguf(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == GGUF_MAGIC
    except OSError:
        return False


def _gguf_architecture(path: Path) -> str:
    try:
        from gguf import GGUFReader

        field_ = GGUFReader(str(path)).fields["general.architecture"]
        return bytes(field_.parts[field_.data[0]]).decode("utf-8")
    except ImportError:
        raise ExportError("reading GGUF files needs the 'gguf' package: pip install 'vrex-edge[export]'") from None
    except Exception as e:  # corrupt or truncated files raise many kinds of errors
        raise ExportError(f"cannot read GGUF metadata from {path}: {e}") from None


def resolve_source(source: str | Path) -> Source:
    """Find what `source` is: an HF folder, a GGUF file (or a folder holding exactly one), or a Hub id."""
    path = Path(source).expanduser()
    if not path.exists() and isinstance(source, str) and _HUB_ID.match(source):
        path = _hub_download(source)
    if not path.exists():
        raise ExportError(f"model source not found: {source} (give a Hugging Face folder or a .gguf file)")
    if path.is_file():
        if not is_gguf(path):
            raise ExportError(f"{path} is neither a model folder nor a GGUF file")
        return Source(path.parent, "gguf", _gguf_architecture(path).lower(), gguf_file=path)
    cfg_path = path / "config.json"
    if cfg_path.is_file():
        try:
            config = json.loads(cfg_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ExportError(f"cannot read {cfg_path}: {e}") from None
        if not isinstance(config, dict) or "model_type" not in config:
            raise ExportError(f"{cfg_path} has no 'model_type'; pass --family to say what the model is")
        return Source(path, "hf", str(config["model_type"]).lower(), config=config)
    adapter = path / ADAPTER_CONFIG
    if adapter.is_file():  # a PEFT adapter checkpoint: its base model is named inside
        try:
            acfg = json.loads(adapter.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ExportError(f"cannot read {adapter}: {e}") from None
        return Source(path, "peft", adapter_model_type(acfg), config=acfg)
    ggufs = [p for p in sorted(path.iterdir()) if p.is_file() and is_gguf(p)]
    if len(ggufs) == 1:
        return resolve_source(ggufs[0])
    if len(ggufs) > 1:
        names = ", ".join(p.name for p in ggufs)
        raise ExportError(f"{path} holds several GGUF files ({names}); pass one of them")
    raise ExportError(f"{path} has no config.json and no GGUF file; it is not a model folder")


def adapter_model_type(adapter_config: dict[str, Any]) -> str:
    """The model_type of a PEFT adapter folder, from what it trains: VideoLLM-online saves its MLP
    connector with the LoRA weights (modules_to_save=["connector"])."""
    if not isinstance(adapter_config, dict):
        raise ExportError(f"{ADAPTER_CONFIG} must hold a JSON object")
    if "connector" in (adapter_config.get("modules_to_save") or ()):
        return "live_llama"
    raise ExportError(
        f"this PEFT adapter (base '{adapter_config.get('base_model_name_or_path')}') is not a "
        "VideoLLM-online checkpoint; merge it into its base model and export the merged folder"
    )


def detect_family(source: str | Path | Source) -> str:
    """The family name for a model source (by model_type, never by file name)."""
    src = source if isinstance(source, Source) else resolve_source(source)
    return get_family(src.model_type).name


def _hub_download(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id))
    except Exception as e:  # offline, unknown repo, gated model, ...
        raise ExportError(
            f"model source not found: '{repo_id}' is not a local path and could not be "
            f"fetched from the Hugging Face Hub ({type(e).__name__})"
        ) from None
