"""Typed options and the session configuration: every bad value is a one-line error."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vrex_edge.errors import ConfigError, VrexError
from vrex_edge.runtime.config import SessionConfig
from vrex_edge.runtime.retrieval import POLICIES, make_policy
from vrex_edge.runtime.retrieval.options import parse_pairs
from vrex_edge.runtime.retrieval.registry import options_markdown

ROOT = Path(__file__).resolve().parent.parent


def bad_values(tp, meta) -> list[str]:
    """Values of the wrong type and out of range for one option."""
    args = [a for a in typing.get_args(tp) if a is not type(None)] or [tp]
    kind = args[0]
    out = ["abc", "inf", "nan"] if kind is not str else []
    if kind is bool:
        out += ["yes please", "2"]
    if kind is int and args != [int, float]:
        out += ["1.5"]
    if meta["lo"] is not None:
        out.append(str(meta["lo"] - 1 if kind is int else meta["lo"] - 0.5))
    if meta["hi"] is not None:
        out.append(str(meta["hi"] + 0.5))
    if meta["choices"]:
        out.append("nonesuch")
    return out


CASES = [
    (name, f.name, v)
    for name, spec in POLICIES.items()
    for f in dataclasses.fields(spec.options)
    for v in bad_values(typing.get_type_hints(spec.options)[f.name], f.metadata)
]


@pytest.mark.parametrize("policy,option,value", CASES)
def test_every_bad_option_value_is_a_one_line_error(policy, option, value):
    with pytest.raises(VrexError) as e:
        make_policy(policy, {option: value})
    msg = str(e.value)
    assert "\n" not in msg and option in msg and repr(value) in msg or "backend" in msg


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_unknown_options_are_named(policy):
    with pytest.raises(ConfigError, match="unknown option.*nonesuch"):
        make_policy(policy, {"nonesuch": "1"})


def test_values_are_typed_once():
    o = make_policy("resv", parse_pairs(["tau=0.95", "incremental=no", "bits=32", "max-kept=4096"])).options
    assert (o.tau, o.incremental, o.bits, o.max_kept) == (0.95, False, 32, 4096)
    assert o.score_keys == o.keys  # resolved, not None
    assert make_policy("topk", {"k": "64"}).options.k == 64 and make_policy("topk", {"k": "0.3"}).options.k == 0.3
    with pytest.raises(ConfigError, match="k must be"):
        make_policy("topk", {"k": "1.5"})


def test_session_config_checks_what_it_holds(tmp_path: Path):
    from vrex_edge.runtime.kvstore import TierConfig

    cfg = SessionConfig.from_cli(model=tmp_path, opts=["tau=0.8"], accel="dre-emu")
    assert cfg.options.tau == 0.8 and cfg.options.accel == "dre-emu"
    with pytest.raises(ConfigError, match="fps"):
        SessionConfig(model=tmp_path, fps=float("nan"))
    with pytest.raises(ConfigError, match="need --policy resv"):
        SessionConfig(model=tmp_path, policy="window", kv=TierConfig(budget=1 << 20))
    with pytest.raises(ConfigError, match="unknown retrieval policy"):
        SessionConfig(model=tmp_path, policy="nope")


@pytest.mark.parametrize("opt", ["incremental=yes please", "max_kept=inf", "tau=abc", "bits=1.5", "taus=0.5"])
def test_cli_bad_options_exit_with_one_line(opt):
    from vrex_edge.cli import app

    r = CliRunner().invoke(app, ["caption", str(ROOT / "samples" / "world_demo.mp4"), "--opt", opt, "-q"])
    assert r.exit_code == 1, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: resv: ") and "Traceback" not in r.output


def test_policies_doc_matches_the_options():
    doc = (ROOT / "docs" / "policies.md").read_text()
    body = doc.split("<!-- options:begin -->\n", 1)[1].split("<!-- options:end -->", 1)[0]
    assert body.strip() == options_markdown().strip()
