"""The CLI through typer's CliRunner: outputs in each format, safe output files, one-line errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from vrex_edge.cli import app, parse_ask

runner = CliRunner()


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-second mp4 (mp4v) of a red disc crossing a grey background at 10 fps."""
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (96, 64))
    for i in range(40):
        frame = np.full((64, 96, 3), 60, np.uint8)
        cv2.circle(frame, (8 + 2 * i, 32), 8, (0, 0, 255), -1)
        writer.write(frame)
    writer.release()
    return path


def run(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def assert_one_line_error(result, pattern: str) -> None:
    assert result.exit_code != 0
    err = result.stderr.strip()
    assert "Traceback" not in result.output + result.stderr
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: ") and re.search(pattern, err), err


def test_caption_jsonl_to_stdout(clip: Path, tiny_videollm_bundle: Path) -> None:
    r = run(
        "caption",
        clip,
        "--model",
        tiny_videollm_bundle,
        "--policy",
        "full",
        "--format",
        "jsonl",
        "-q",
        "--ask",
        "1.2=what is on the table",
    )
    assert r.exit_code == 0, r.output
    records = [json.loads(line) for line in r.stdout.splitlines()]
    answers = [x for x in records if x["kind"] == "answer"]
    assert len(answers) == 1 and answers[0]["question"] == "what is on the table" and answers[0]["t"] >= 1.0
    times = [x["t"] for x in records]
    assert times == sorted(times) and max(times) <= 4.0


@pytest.mark.parametrize("fmt", ["text", "srt"])
def test_caption_formats_to_file(clip: Path, tiny_videollm_bundle: Path, tmp_path: Path, fmt: str) -> None:
    out = tmp_path / f"captions.{fmt}"
    r = run(
        "caption",
        clip,
        "--model",
        tiny_videollm_bundle,
        "--policy",
        "full",
        "--format",
        fmt,
        "-o",
        out,
        "-q",
        "--opt",
        "tau=0.9",
    )
    assert_one_line_error(r, r"full: unknown option\(s\) tau \(known: engine\)")
    r = run("caption", clip, "--model", tiny_videollm_bundle, "--policy", "full", "--format", fmt, "-o", out, "-q")
    assert r.exit_code == 0, r.output
    text = out.read_text()
    assert r.stdout == ""
    if fmt == "srt":
        assert re.match(r"1\n00:00:\d\d,\d{3} --> 00:00:\d\d,\d{3}\n", text)
    else:
        assert all(re.match(r"\[\d\d:\d\d:\d\d\.\d{3}\] ", line) for line in text.splitlines())
    assert not list(tmp_path.glob(".*.tmp")), "temporary output left behind"


def test_failed_run_keeps_existing_output(tmp_path: Path, tiny_videollm_bundle: Path) -> None:
    out = tmp_path / "keep.txt"
    out.write_text("the user's notes\n")
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"not a video at all" * 100)
    r = run("caption", bad, "--model", tiny_videollm_bundle, "-o", out)
    assert_one_line_error(r, "cannot open|no frames")
    assert out.read_text() == "the user's notes\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.mp4", "keep.txt"]


def test_user_errors_are_one_line(clip: Path, tiny_videollm_bundle: Path, tmp_path: Path) -> None:
    assert_one_line_error(run("caption", tmp_path / "missing.mp4", "--model", tiny_videollm_bundle), "not found")
    assert_one_line_error(run("caption", clip, "--model", tmp_path), "manifest")
    assert_one_line_error(run("caption", clip, "--model", tmp_path / "nope"), "bundle not found")
    assert_one_line_error(
        run("caption", clip, "--model", tiny_videollm_bundle, "--policy", "magic"), "unknown retrieval policy"
    )
    assert_one_line_error(
        run("caption", clip, "--model", tiny_videollm_bundle, "--format", "xml"), "unknown output format"
    )
    assert_one_line_error(run("caption", clip, "--model", tiny_videollm_bundle, "--ask", "soon=hello"), "--ask")
    assert_one_line_error(run("caption", clip, "--model", tiny_videollm_bundle, "--fps", "0"), "fps")
    assert_one_line_error(
        run("caption", clip, "--model", tiny_videollm_bundle, "-o", tmp_path / "no" / "x.txt"), "does not exist"
    )
    assert_one_line_error(run("info", tmp_path / "nope"), "bundle not found")


def test_text_bundle_cannot_caption(clip: Path, tiny_llama_bundle: Path) -> None:
    assert_one_line_error(run("caption", clip, "--model", tiny_llama_bundle), "text-only")


def test_info(tiny_videollm_bundle: Path) -> None:
    r = run("info", tiny_videollm_bundle)
    assert r.exit_code == 0, r.output
    assert "10 tokens per frame" in r.stdout and "sha256 verified" in r.stdout


def test_export_refuses_to_overwrite(tiny_videollm_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    r = run("export", "--model", tiny_videollm_checkpoint, "--out", out)
    assert r.exit_code == 0, r.output
    assert (out / "manifest.json").is_file()
    before = (out / "manifest.json").read_bytes()
    assert_one_line_error(run("export", "--model", tiny_videollm_checkpoint, "--out", out), "exists")
    assert (out / "manifest.json").read_bytes() == before
    assert_one_line_error(run("export", "--model", tmp_path / "missing", "--out", tmp_path / "b2"), "")


def test_parse_ask() -> None:
    assert parse_ask(["1:05=where?", "3=what?"]) == [(3.0, "what?"), (65.0, "where?")]


def test_output_format_follows_the_suffix_unless_given():
    """-o x.srt writes SRT and -o x.jsonl JSON lines without --format; other names keep the default."""
    from vrex_edge.cli import format_for

    assert format_for(Path("a.srt"), "text") == "srt"
    assert format_for(Path("a.JSONL"), "text") == "jsonl"
    assert format_for(Path("a.txt"), "jsonl") == "text"
    assert format_for(Path("a.log"), "jsonl") == "jsonl"
    assert format_for(None, "text") == "text"


def test_kv_flags_build_the_tier_config():
    from vrex_edge.cli.commands import kv_config

    assert kv_config(None, None, None) is None  # all resident
    on, off = kv_config("64M", None, None), kv_config("64M", None, None, prefetch=False)
    assert on.budget == off.budget == 64 << 20 and on.prefetch and not off.prefetch
