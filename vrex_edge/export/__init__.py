"""Export model families to per-stage ONNX bundles, with parity verification against PyTorch.

This package imports torch and transformers; the CLI imports it lazily.
"""

from __future__ import annotations

import resource
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from vrex_edge.errors import ExportError

DTYPES = ("fp32", "fp16", "int8", "int4")


@dataclass(frozen=True)
class ExportReport:
    out: Path
    family: str
    dtype: str
    errors: dict[str, float]  # stage key ("embed", "layers.0.pre", ...) -> max abs error vs PyTorch
    sizes: dict[str, int] = field(default_factory=dict)  # bundle file -> bytes
    seconds: float = 0.0
    peak_rss_bytes: int = 0  # the process's peak resident memory when the export finished

    @property
    def total_bytes(self) -> int:
        return sum(self.sizes.values())

    @property
    def max_error(self) -> float:
        return max(self.errors.values(), default=0.0)


def export_bundle(
    source: str | Path,
    out: str | Path,
    *,
    family: str | None = None,
    dtype: str = "fp32",
    force: bool = False,
    verify: bool = True,
    progress: Callable[[str], None] | None = None,
) -> ExportReport:
    """Export `source` (HF folder, GGUF file, or Hub id) to a bundle folder at `out`.

    The bundle is built in a temporary folder beside `out` and renamed into place, so a failed
    export never leaves a partial bundle, and with force=True never loses the old one.
    """
    if dtype not in DTYPES:
        raise ExportError(f"unknown dtype '{dtype}' (choose {', '.join(DTYPES)})")
    say = progress or (lambda _msg: None)
    out = Path(out).expanduser()
    if out.exists() and not force:
        raise ExportError(f"{out} already exists; pass --force to replace it")
    start = time.perf_counter()

    from vrex_edge.export.registry import get_family, resolve_source

    src = resolve_source(source)
    fam = get_family(family) if family else get_family(src.model_type)
    say(f"loading {fam.name} model from {src.gguf_file or src.path}")
    model = fam.load(src)

    from vrex_edge.export.pipeline import write_bundle

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        errors = write_bundle(model, tmp, family=fam.name, dtype=dtype, source=str(source), verify=verify, progress=say)
        _swap_into_place(tmp, out, force=force)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    sizes = {str(p.relative_to(out)): p.stat().st_size for p in sorted(out.rglob("*")) if p.is_file()}
    seconds = time.perf_counter() - start
    peak = peak_rss_bytes()
    say(f"wrote {out} ({sum(sizes.values()) / 1e6:.1f} MB) in {seconds:.1f} s; peak RSS {peak / 2**30:.2f} GiB")
    return ExportReport(out=out, family=fam.name, dtype=dtype, errors=errors, sizes=sizes, seconds=seconds,
                        peak_rss_bytes=peak)


def peak_rss_bytes() -> int:
    """Peak resident memory of this process so far (Linux reports ru_maxrss in KiB)."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _swap_into_place(tmp: Path, out: Path, *, force: bool) -> None:
    if not out.exists():
        tmp.rename(out)
        return
    if not force:
        raise ExportError(f"{out} already exists; pass --force to replace it")
    old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
    out.rename(old)
    try:
        tmp.rename(out)
    except OSError:
        old.rename(out)  # put the user's bundle back
        raise
    if old.is_dir():
        shutil.rmtree(old, ignore_errors=True)
    else:
        old.unlink()


__all__ = ["DTYPES", "ExportReport", "export_bundle"]
