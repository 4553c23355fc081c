"""Bundle loading: every validation error is a BundleError that says what is wrong."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from vrex_edge.bundle import MANIFEST, load_manifest, manifest_from_dict, manifest_to_dict
from vrex_edge.errors import BundleError, VrexError


@pytest.fixture
def bundle(tiny_videollm_bundle: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_videollm_bundle, tmp_path / "bundle"))


def _edit(root: Path, change: Callable[[dict[str, Any]], None]) -> None:
    path = root / MANIFEST
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_valid_bundle_round_trips(bundle: Path) -> None:
    m = load_manifest(bundle)
    assert manifest_from_dict(manifest_to_dict(m)) == m
    assert issubclass(BundleError, VrexError)


def test_missing_bundle_or_manifest(tmp_path: Path, bundle: Path) -> None:
    with pytest.raises(BundleError, match="bundle not found"):
        load_manifest(tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(BundleError, match="must be a folder"):
        load_manifest(tmp_path / "file")
    (bundle / MANIFEST).unlink()
    with pytest.raises(BundleError, match="has no manifest.json"):
        load_manifest(bundle)


@pytest.mark.parametrize("text, match", [("{", "cannot read"), ("[1, 2]", "must hold a JSON object")])
def test_unreadable_manifest(bundle: Path, text: str, match: str) -> None:
    (bundle / MANIFEST).write_text(text)
    with pytest.raises(BundleError, match=match):
        load_manifest(bundle)


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(d: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        for p in parents:
            d = d[int(p)] if isinstance(d, list) else d[p]
        if value is _DELETE:
            del d[last]
        else:
            d[last] = value

    return change


_DELETE = object()

CASES = [
    ("format", "something-else", "not a vrex bundle"),
    ("format_version", 99, "unknown format_version 99"),
    ("text.hidden_size", _DELETE, "missing field 'text.hidden_size'"),
    ("text.num_layers", "two", "malformed field"),
    ("text.num_layers", 3, "2 layer stages for 3 layers"),
    ("text.num_kv_heads", 3, "not a multiple of num_kv_heads"),
    ("text.rope.inv_freq", [1.0, 0.5], "inv_freq has 2 entries for head_dim 16"),
    ("tokens.end_of_turn", [], "end_of_turn is empty"),
    ("stages.embed.outputs.0.dtype", "bfloat16", "unknown dtype 'bfloat16'"),
    ("stages.head", "head.onnx", "stage 'head' must be an object"),
    ("stages.vision", None, "must be given together"),
    ("stages.head.file", "stages/other.onnx", "'stages/other.onnx' has no sha256"),
    ("tokenizer", "tok.json", "tokenizer 'tok.json' has no sha256"),
    ("vision.pad_color", "black", r"pad_color must be 'mean' or \[r, g, b\] integers 0-255, got 'black'"),
    ("vision.pad_color", [0, 0, 256], r"pad_color must be .* got \[0, 0, 256\]"),
    ("vision.pad_color", [0.5, 0.5, 0.5], "pad_color must be 'mean' or"),
    ("prompt.question_template", "User: {q}\nAssistant:", "must contain {question} and no other field"),
    ("prompt.question_template", "User: {question", "question_template is not a valid template"),
]


@pytest.mark.parametrize("path, value, match", CASES, ids=[c[0] + ":" + c[2][:20] for c in CASES])
def test_malformed_fields(bundle: Path, path: str, value: Any, match: str) -> None:
    _edit(bundle, _set(path, value))
    with pytest.raises(BundleError, match=match):
        load_manifest(bundle)


def test_hash_mismatch(bundle: Path) -> None:
    m = load_manifest(bundle)
    stage = bundle / m.stages.layers[1].post.file
    stage.write_bytes(stage.read_bytes() + b"\0")
    with pytest.raises(BundleError, match=f"{m.stages.layers[1].post.file} does not match its sha256"):
        load_manifest(bundle)
    assert load_manifest(bundle, verify_hashes=False) == m


def test_missing_stage_file(bundle: Path) -> None:
    m = load_manifest(bundle)
    (bundle / m.stages.head.file).unlink()
    with pytest.raises(BundleError, match="bundle file missing: stages/head.onnx"):
        load_manifest(bundle)


@pytest.mark.parametrize(
    "rel, match",
    [
        ("../outside.onnx", "escapes the bundle"),
        ("stages/../../outside.onnx", "escapes the bundle"),
        ("/etc/passwd", "must be relative"),
    ],
)
def test_stage_path_escaping_the_bundle(bundle: Path, rel: str, match: str) -> None:
    (bundle.parent / "outside.onnx").write_bytes((bundle / "stages" / "head.onnx").read_bytes())

    def change(d: dict[str, Any]) -> None:
        old = d["stages"]["head"]["file"]
        d["stages"]["head"]["file"] = rel
        d["files"][rel] = d["files"].pop(old)

    _edit(bundle, change)
    with pytest.raises(BundleError, match=match):
        load_manifest(bundle)
