"""`vrex-edge bench` end to end on tiny random models (tiny sizes), and its variant expansion."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from vrex_edge.bench import expand_variants
from vrex_edge.cli import app
from vrex_edge.errors import ConfigError


def _rows(md: str) -> list[list[str]]:
    lines = [ln for ln in md.splitlines() if ln.startswith("| ") and not ln.startswith("| cached")]
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in lines]


def _pct(cell: str) -> float:
    return float(cell.rstrip("%")) / 100


@pytest.mark.parametrize("workload,bundle", [("video", "tiny_videollm_bundle"), ("text", "tiny_llama_bundle")])
def test_bench_cli_table_and_files(workload: str, bundle: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    model = request.getfixturevalue(bundle)
    out = tmp_path / "out"
    res = CliRunner().invoke(
        app,
        [
            "bench",
            "--workload",
            workload,
            "--model",
            str(model),
            "--sizes",
            "60,300",
            "--policies",
            "resv topk:k=0.5 window:recent=64 oracle:tau=0.9",
            "--opt",
            "sink=4",
            "--opt",
            "recent=32",
            "--frames",
            "3",
            "--gen",
            "2",
            "--probes",
            "1",
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    rows = _rows(res.output)
    assert [r[0] for r in rows] == ["60"] * 5 + ["300"] * 5
    variants = [r[1].strip("`") for r in rows[:5]]
    assert variants == [
        "full",
        "resv:sink=4,recent=32",
        "topk:k=0.5,sink=4,recent=32",
        "window:recent=64,sink=4",
        "oracle:tau=0.9,sink=4,recent=32",
    ]
    for r in rows:
        size, var = int(r[0].replace(",", "")), r[1].strip("`")
        kept_pre, kept_dec = _pct(r[6]), _pct(r[7])
        assert 0 < kept_pre <= 1 and 0 < kept_dec <= 1, r
        assert float(r[2]) > 0 and float(r[3]) >= float(r[2])  # p95 >= median
        if var == "full":
            assert r[4] == "1.00x" and kept_pre == kept_dec == 1.0
            assert r[8] == "100.0%" and r[9] == "0.0000" and r[12] == "1/1"
        else:
            assert 0 <= _pct(r[8]) <= 1 and float(r[9]) >= 0 and r[12] in ("0/1", "1/1")
        if size == 300 and var.startswith(("resv", "oracle")):
            assert kept_pre < 1  # history exists beyond sink + recent and tau < 1 drops some of it
    md = (out / f"policies_{workload}.md").read_text()
    assert md.startswith(f"# vrex-edge bench: {workload}") and "vrex-edge bench" in md.split("```")[1]
    for name in (f"latency_{workload}.png", f"heatmap_{workload}.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_cli_user_errors(tiny_videollm_bundle: Path) -> None:
    r = CliRunner().invoke(app, ["bench", "-w", "video", "-m", str(tiny_videollm_bundle), "--sizes", "ten"])
    assert r.exit_code != 0 and "--sizes" in r.output
    r = CliRunner().invoke(app, ["bench", "-w", "audio", "-m", str(tiny_videollm_bundle), "--sizes", "50"])
    assert r.exit_code != 0 and "unknown workload" in r.output


def test_expand_variants() -> None:
    v = expand_variants(["full", "resv:tau=0.95", "topk"], {"tau": 0.8, "k": 0.3}, accels=["host", "dre-emu"])
    assert v == ["full", "resv:tau=0.95", "resv:tau=0.95,accel=dre-emu", "topk:k=0.3"]
    assert expand_variants(["resv"], {"tau": 0.8}) == ["resv:tau=0.8"]
    with pytest.raises(ConfigError, match="bits"):
        expand_variants(["topk"], {"bits": 16})


def test_caption_f1_scores_a_caption_file_against_the_samples_events(tmp_path: Path):
    import json
    from types import SimpleNamespace

    from benchmarks.caption_f1 import read_captions
    from vrex_edge.world.score import score_narration

    ev = dict(kind="stop", color="red", shape="cross", size="big", obj=0, frame=0)
    events = [dict(ev, time=4.0), dict(ev, color="blue", time=65.5)]
    (tmp_path / "s.json").write_text(json.dumps({"events": events}))
    caps = tmp_path / "c.txt"
    caps.write_text("[00:00:04.500] the red cross stops\nnot a caption\n[00:01:05.000] the blue cross turns up\n")
    got = read_captions(caps)
    assert got == [(4.5, "the red cross stops"), (65.0, "the blue cross turns up")]
    s = score_narration(got, [SimpleNamespace(**e) for e in events])
    assert s.matched == 1 and s.timed == 2 and abs(s.f1 - 0.5) < 1e-9  # one exact sentence of two, both on time
