"""Random weights and synthetic tokenizers at published sizes, written without holding a model in memory.

Used by `vrex_edge.testing.checkpoints`: a checkpoint's tensor names and shapes come from a model
built on the meta device; each tensor is drawn, cast to the published dtype, added to the current
shard, and dropped once that shard is written (safetensors, `model-0000k-of-0000n` + index as the
Hub lays out sharded models).
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

SHARD_BYTES = 5_000_000_000  # transformers' default max_shard_size ("5GB")


def tensor_specs(model: Any, rename: Callable[[str], str] = lambda k: k) -> list[tuple[str, tuple[int, ...]]]:
    """(checkpoint name, shape) of every parameter of a (meta) model; tied weights appear once."""
    return [(rename(name), tuple(p.shape)) for name, p in model.named_parameters()]


def hf_checkpoint_names(model: Any) -> dict[str, str]:
    """model parameter name -> the name transformers' save_pretrained writes (reverts renamings such
    as LLaVA's `model.language_model.*` -> `language_model.model.*`)."""
    from transformers.core_model_loading import revert_weight_conversion

    names = [n for n, _ in model.named_parameters()]
    tagged = {n: i for i, n in enumerate(names)}  # carry the index through the rename as the "tensor"
    reverted = revert_weight_conversion(model, tagged)
    return {names[i]: k for k, i in reverted.items()}


def random_tensor(name: str, shape: tuple[int, ...], dtype: Any, *, seed: int, std: float = 0.02) -> Any:
    """A deterministic random tensor for `name` (same values whatever order tensors are written in):
    norm weights ~ 1 + N(0, std), everything else ~ N(0, std)."""
    import torch

    g = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
    t = torch.randn(shape, generator=g)  # [shape] float32
    t.mul_(std)
    if len(shape) == 1 and name.endswith(".weight"):  # RMSNorm / LayerNorm scales
        t.add_(1.0)
    return t.to(dtype)


def write_shards(
    folder: Path,
    specs: Iterable[tuple[str, tuple[int, ...]]],
    *,
    dtype: Any,
    seed: int,
    shard_bytes: int = SHARD_BYTES,
    single_name: str = "model.safetensors",
    draw: Callable[[str, tuple[int, ...]], Any] | None = None,
    progress: Callable[[str], None] | None = None,
) -> int:
    """Write random tensors for `specs` into safetensors shards in `folder`; returns the total bytes.

    One shard is in memory at a time. One shard: `single_name`; several: model-0000k-of-0000n
    .safetensors plus model.safetensors.index.json."""
    import torch
    from safetensors.torch import save_file

    specs = list(specs)
    itemsize = torch.empty((), dtype=dtype).element_size()
    groups: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    size = 0
    for name, shape in specs:
        n = itemsize * int(torch.Size(shape).numel())
        if groups[-1] and size + n > shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append((name, shape))
        size += n
    total = 0
    weight_map: dict[str, str] = {}
    folder.mkdir(parents=True, exist_ok=True)
    for k, group in enumerate(groups, 1):
        file = single_name if len(groups) == 1 else f"model-{k:05d}-of-{len(groups):05d}.safetensors"
        shard = {}
        for name, shape in group:
            shard[name] = (draw or (lambda nm, sh: random_tensor(nm, sh, dtype, seed=seed)))(name, shape).contiguous()
            total += shard[name].numel() * shard[name].element_size()
            weight_map[name] = file
        save_file(shard, str(folder / file), metadata={"format": "pt"})
        del shard
        if progress:
            progress(f"wrote {folder / file}")
    if len(groups) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2), encoding="utf-8")
    return total


def synthetic_tokenizer(regular: int, specials: dict[int, str], *, words: Iterable[str] = ()) -> Any:
    """A byte-level BPE `tokenizers.Tokenizer` with exactly `regular` ordinary tokens plus `specials`
    at the given ids; ids 0 .. regular + len(specials) - 1 are all used.

    The vocabulary is synthetic: the 256 byte symbols, `words` (each reachable by merges, so common
    prompt words are single tokens), then concatenations of earlier tokens until the size is reached.
    Any text encodes (byte fallback through the byte symbols); only the ids and sizes are the published ones."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    symbols = sorted(pre_tokenizers.ByteLevel.alphabet())  # the 256 byte symbols
    vocab: dict[str, int] = {}
    merges: list[tuple[str, str]] = []
    free = (i for i in range(regular + len(specials)) if i not in specials)

    def add(tok: str) -> None:
        vocab[tok] = next(free)

    for c in symbols:
        add(c)
    to_bytes = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    for w in words:
        sym = to_bytes.pre_tokenize_str(w)[0][0]
        for j in range(2, len(sym) + 1):
            if sym[:j] not in vocab and sym[: j - 1] in vocab and len(vocab) < regular:
                merges.append((sym[: j - 1], sym[j - 1]))
                add(sym[:j])
    tokens = list(vocab)
    a = 0
    while len(vocab) < regular:  # deterministic filler: token a + each byte symbol
        left = tokens[a % len(tokens)]
        for c in symbols:
            new = left + c
            if new not in vocab and len(vocab) < regular:
                merges.append((left, c))
                add(new)
                tokens.append(new)
        a += 1
    for i, s in specials.items():
        vocab[s] = i
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials.values()])
    return tok


def save_tokenizer(folder: Path, tok: Any, *, chat_template: str | None = None, **special: Any) -> None:
    """tokenizer.json, tokenizer_config.json and special_tokens_map.json as transformers writes them."""
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **special)
    if chat_template is not None:
        fast.chat_template = chat_template
    fast.save_pretrained(str(folder))


def write_json(path: Path, obj: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")
