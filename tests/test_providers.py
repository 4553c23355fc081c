"""--provider short names and the one-line error when this onnxruntime lacks a provider (CPU-only CI)."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort
import pytest
from typer.testing import CliRunner

from vrex_edge.cli import app
from vrex_edge.errors import ConfigError
from vrex_edge.runtime.engine import check_providers, missing_provider_message, provider_name, uses_cuda

ROOT = Path(__file__).resolve().parent.parent
HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()


@pytest.mark.parametrize(
    ("arg", "name"),
    [
        ("cpu", "CPUExecutionProvider"),
        ("CPU", "CPUExecutionProvider"),
        ("cuda", "CUDAExecutionProvider"),
        ("Cuda", "CUDAExecutionProvider"),
        ("tensorrt", "TensorrtExecutionProvider"),
        ("trt", "TensorrtExecutionProvider"),
        ("CUDAExecutionProvider", "CUDAExecutionProvider"),
        ("CPUExecutionProvider", "CPUExecutionProvider"),
    ],
)
def test_short_names(arg: str, name: str) -> None:
    assert provider_name(arg) == name


def test_check_providers_maps_short_names() -> None:
    assert check_providers(["cpu"]) == ["CPUExecutionProvider"]
    assert check_providers([("cpu", {"arena_extend_strategy": "kSameAsRequested"})]) == [
        ("CPUExecutionProvider", {"arena_extend_strategy": "kSameAsRequested"})
    ]
    assert not uses_cuda(["CPUExecutionProvider"])
    assert uses_cuda(["CUDAExecutionProvider", "CPUExecutionProvider"]) and uses_cuda(["TensorrtExecutionProvider"])


def test_missing_gpu_provider_says_what_to_install() -> None:
    msg = missing_provider_message("CUDAExecutionProvider", ["CPUExecutionProvider"], "1.30.0")
    assert "\n" not in msg
    assert "onnxruntime 1.30.0" in msg and "it has: CPUExecutionProvider" in msg
    assert "onnxruntime-gpu" in msg and "vrex-edge[gpu]" in msg and "Jetson" in msg and "JetPack" in msg
    other = missing_provider_message("NoSuchExecutionProvider", ["CPUExecutionProvider"], "1.30.0")
    assert "short names: cpu, cuda, tensorrt, trt" in other and "Jetson" not in other


@pytest.mark.skipif(HAS_CUDA, reason="this onnxruntime has the CUDA provider")
def test_cuda_missing_raises_config_error() -> None:
    with pytest.raises(ConfigError, match=r"'CUDAExecutionProvider' is not available.*onnxruntime-gpu"):
        check_providers(["cuda"])


@pytest.mark.skipif(HAS_CUDA, reason="this onnxruntime has the CUDA provider")
def test_cli_cuda_missing_is_one_line() -> None:
    r = CliRunner().invoke(app, ["caption", str(ROOT / "samples" / "world_demo.mp4"), "--provider", "cuda"])
    assert r.exit_code != 0
    err = r.stderr.strip()
    assert "Traceback" not in r.output + r.stderr
    assert len(err.splitlines()) == 1, err
    assert "CUDAExecutionProvider" in err and "onnxruntime-gpu" in err and "Jetson" in err
