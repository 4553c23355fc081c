"""Weights that stay on disk until a stage needs them.

A family builds its model with parameters on the meta device (`empty_model`) and attaches a
lookup that reads a parameter by its name in that model (`LazyWeights.attach`). The exporter
materialises one stage's parameters at a time (`LazyWeights.materialized`) and puts them back
on the meta device afterwards, so an export holds about one stage in memory, not the model.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vrex_edge.errors import ExportError

Lookup = Callable[[str], torch.Tensor]  # parameter name in the model -> its values (any float dtype)
RowLookup = Callable[[str, int, int], torch.Tensor]  # (name, start, stop) -> rows start:stop of a 2-D weight


def empty_model(build: Callable[[], nn.Module]) -> nn.Module:
    """`build()` with parameters on the meta device; buffers (RoPE frequencies, position ids) are real."""
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        model = build()
    if hasattr(model, "tie_weights"):  # transformers ties at init, but not under init_empty_weights
        model.tie_weights()
    return model.float().eval()


class SafetensorsFolder:
    """The tensors of a folder's `*.safetensors` files, read one at a time (memory-mapped).

    `rename` maps a checkpoint key to the key the caller asks for (None drops it)."""

    def __init__(
        self, folder: Path, *, rename: Callable[[str], str | None] = lambda k: k, files: tuple[str, ...] | None = None
    ):
        from safetensors import safe_open

        self.folder = Path(folder)
        names = files or self._shards()
        if not names:
            raise ExportError(f"{self.folder} has no .safetensors weights")
        self._where: dict[str, tuple[Path, str]] = {}  # key asked for -> (file, checkpoint key)
        for name in names:
            path = self.folder / name
            with safe_open(str(path), "pt") as f:
                for key in f.keys():
                    new = rename(key)
                    if new is not None:
                        self._where[new] = (path, key)

    def _shards(self) -> tuple[str, ...]:
        index = self.folder / "model.safetensors.index.json"
        if index.is_file():
            return tuple(sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())))
        return tuple(sorted(p.name for p in self.folder.glob("*.safetensors")))

    def __contains__(self, key: str) -> bool:
        return key in self._where

    def keys(self) -> list[str]:
        return list(self._where)

    def get(self, key: str) -> torch.Tensor:
        from safetensors import safe_open

        path, ck = self._where[key]
        with safe_open(str(path), "pt") as f:
            return f.get_tensor(ck)

    def get_rows(self, key: str, start: int, stop: int) -> torch.Tensor:
        """Rows start:stop of a 2-D tensor, without reading the rest."""
        from safetensors import safe_open

        path, ck = self._where[key]
        with safe_open(str(path), "pt") as f:
            return f.get_slice(ck)[start:stop]


def hf_folder(model: nn.Module, folder: Path) -> SafetensorsFolder:
    """A Hugging Face model folder's weights under the names of `model`'s parameters, renamed as
    transformers' `from_pretrained` renames them (e.g. LLaVA's legacy `language_model.model.*`)."""
    renamings = _hf_renamings(model)

    def rename(key: str) -> str:
        if not renamings:
            return key
        from transformers.core_model_loading import rename_source_key

        return rename_source_key(key, renamings, [])[0]

    return SafetensorsFolder(folder, rename=rename)


def _hf_renamings(model: nn.Module) -> list[Any]:
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightRenaming
    except ImportError:  # older transformers: checkpoints use the model's own names
        return []
    transforms = get_model_conversion_mapping(model)
    if any(not isinstance(t, WeightRenaming) for t in transforms):
        raise ExportError(
            f"{type(model).__name__} checkpoints need weight conversions that a streaming export "
            "does not apply; report this model"
        )
    return list(transforms)


class LazyWeights:
    """Where each meta parameter of one or more models comes from, and stage-by-stage materialisation."""

    def __init__(self) -> None:
        self._slots: dict[tuple[int, str], tuple[tuple[str, ...], Lookup, RowLookup | None]] = {}

    def attach(self, root: nn.Module, lookup: Lookup, rows: RowLookup | None = None) -> None:
        """Every parameter of `root`, looked up by its name(s) in `root` (tied weights have several);
        `rows` reads part of a 2-D weight without the rest (without it, `load_rows` reads the whole)."""
        names: dict[int, list[str]] = {}
        for name, p in root.named_parameters(remove_duplicate=False):
            names.setdefault(id(p), []).append(name)
        for mod_name, mod in root.named_modules(remove_duplicate=False):
            for pname, p in mod._parameters.items():
                if p is None:
                    continue
                own = f"{mod_name}.{pname}" if mod_name else pname
                self._slots[(id(mod), pname)] = ((own, *[n for n in names[id(p)] if n != own]), lookup, rows)

    def has(self, module: nn.Module, pname: str) -> bool:
        return (id(module), pname) in self._slots

    def load(self, module: nn.Module, pname: str) -> torch.Tensor:
        """The fp32 values of `module`'s parameter `pname`, read from disk."""
        return self._read(module, pname, None)

    def load_rows(self, module: nn.Module, pname: str, start: int, stop: int) -> torch.Tensor:
        """Rows start:stop (fp32) of `module`'s 2-D parameter `pname`, read from disk."""
        return self._read(module, pname, (start, stop))

    def _read(self, module: nn.Module, pname: str, span: tuple[int, int] | None) -> torch.Tensor:
        slot = self._slots.get((id(module), pname))
        if slot is None:
            raise ExportError(f"internal: no weight source for parameter '{pname}' of {type(module).__name__}")
        names, lookup, rows = slot
        want = tuple(module._parameters[pname].shape)
        for name in names:
            try:
                if span is None:
                    t = lookup(name)
                elif rows is not None:
                    t = rows(name, *span)
                else:
                    t = lookup(name)[span[0] : span[1]]
            except KeyError:
                continue
            if span is None:
                fits = tuple(t.shape) == want
            else:  # a block of rows: the other dimensions, and as many rows as the parameter has there
                fits = tuple(t.shape[1:]) == want[1:] and t.shape[0] == min(span[1], want[0]) - span[0]
            if not fits:
                raise ExportError(f"checkpoint tensor '{name}' has shape {tuple(t.shape)}, the config says {want}")
            return t.float()
        raise ExportError(f"the checkpoint has no weights for '{names[0]}'")

    @contextlib.contextmanager
    def materialized(self, module: nn.Module) -> Iterator[None]:
        """Real parameters for every meta parameter under `module` inside the block, meta again after."""
        done: list[tuple[nn.Module, str, torch.Size]] = []
        try:
            for sub in {id(m): m for m in module.modules()}.values():
                for pname, p in list(sub._parameters.items()):
                    if p is not None and p.is_meta and (id(sub), pname) in self._slots:
                        sub._parameters[pname] = nn.Parameter(self.load(sub, pname), requires_grad=False)
                        done.append((sub, pname, p.shape))
            yield
        finally:
            for sub, pname, shape in done:
                sub._parameters[pname] = nn.Parameter(torch.empty(shape, device="meta"), requires_grad=False)


def check_no_meta(module: nn.Module, what: str) -> None:
    """Raise if `module` still has meta parameters (a stage whose weights were never attached)."""
    left = [n for n, p in module.named_parameters() if p.is_meta]
    if left:
        raise ExportError(f"internal: {what} has parameters without weights ({left[0]}, ...)")
