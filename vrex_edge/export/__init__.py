"""Export model families to per-stage ONNX bundles, with parity verification against PyTorch.

This package imports torch and transformers; the CLI imports it lazily.
"""

from __future__ import annotations

import importlib.util
import resource
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from vrex_edge.errors import ExportError

DTYPES = ("fp32", "fp16", "int8", "int4")
EXTRA_MODULES = frozenset({"torch", "transformers", "safetensors", "accelerate", "gguf", "onnx_ir", "peft"})
INSTALL_EXTRA = "run .venv/bin/pip install -e '.[export]' (or your environment's pip) in the vrex-edge folder"


@contextmanager
def needs_export_extra() -> Iterator[None]:
    """A module of the `export` extra missing -> ExportError saying what to install."""
    try:
        yield
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] not in EXTRA_MODULES:
            raise
        raise ExportError(f"export needs the export extra ({e.name} is not installed): {INSTALL_EXTRA}") from None


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
    missing = [m for m in ("torch", "transformers") if not _importable(m)]
    if missing:  # say so before any work (every family needs both)
        raise ExportError(f"export needs the export extra ({', '.join(missing)} not installed): {INSTALL_EXTRA}")

    with needs_export_extra():  # a family's loader imports torch/transformers/... lazily
        from vrex_edge.export.registry import get_family, resolve_source

        src = resolve_source(source)
        fam = get_family(family) if family else get_family(src.model_type)
        tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
        try:  # before loading the model: an unwritable --out fails at once
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp.mkdir()
        except OSError as e:
            raise ExportError(
                f"cannot create the bundle in {out.parent}: {e.strerror or e}; choose another --out"
            ) from None
        try:
            say(f"loading {fam.name} model from {src.gguf_file or src.path}")
            model = fam.load(src)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

        from vrex_edge.export.pipeline import write_bundle

        try:
            errors = write_bundle(
                model, tmp, family=fam.name, dtype=dtype, source=str(source), verify=verify, progress=say
            )
            _swap_into_place(tmp, out, force=force)
        except OSError as e:  # a full disk or a permission error: nothing partial stays, an old bundle is kept
            shutil.rmtree(tmp, ignore_errors=True)
            raise ExportError(
                f"cannot write the bundle {out}: {e.strerror or e}; free some space or choose another --out"
            ) from None
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    sizes = {str(p.relative_to(out)): p.stat().st_size for p in sorted(out.rglob("*")) if p.is_file()}
    seconds = time.perf_counter() - start
    peak = peak_rss_bytes()
    say(f"wrote {out} ({sum(sizes.values()) / 1e6:.1f} MB) in {seconds:.1f} s; peak RSS {peak / 2**30:.2f} GiB")
    return ExportReport(
        out=out, family=fam.name, dtype=dtype, errors=errors, sizes=sizes, seconds=seconds, peak_rss_bytes=peak
    )


def peak_rss_bytes() -> int:
    """Peak resident memory of this process so far (Linux reports ru_maxrss in KiB)."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # ValueError: a module set to None in sys.modules
        return False


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


__all__ = ["DTYPES", "ExportReport", "export_bundle", "needs_export_extra"]
