"""Every retrieval policy, in one place: `--policy NAME` looks its spec up here.

Adding a policy is adding a module with a `SPEC` (retrieval/policy.py) and listing it below.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vrex_edge.errors import ConfigError
from vrex_edge.runtime.retrieval import full, oracle, resv, topk, window
from vrex_edge.runtime.retrieval.policy import Policy, PolicySpec

POLICIES: dict[str, PolicySpec] = {s.name: s for s in (full.SPEC, window.SPEC, topk.SPEC, resv.SPEC, oracle.SPEC)}


def policy_names() -> list[str]:
    return sorted(POLICIES)


def get_spec(name: str) -> PolicySpec:
    """The spec of policy `name` (ConfigError listing the policies when there is none)."""
    if name not in POLICIES:
        raise ConfigError(f"unknown retrieval policy '{name}' (choose from: {', '.join(policy_names())})")
    return POLICIES[name]


def make_policy(
    name: str, options: Mapping[str, Any] | None = None, /, *, device: str = "cpu", **kwargs: Any
) -> Policy:
    """A policy from its name and options (text from a CLI or Python values; validated here); device:
    where the session's graphs run (Policy)."""
    spec = get_spec(name)
    return Policy(spec, spec.options.parse({**dict(options or {}), **kwargs}), device=device)


def options_markdown() -> str:
    """The option tables of docs/policies.md, generated from the options dataclasses."""
    import dataclasses

    out: list[str] = []
    for name, spec in POLICIES.items():
        out += [f"## {name}: {spec.summary}", ""]
        fields = dataclasses.fields(spec.options)
        if not fields:
            out += ["No options.", ""]
            continue
        out += ["| option | default | accepts | changes results | meaning |", "|---|---|---|---|---|"]
        for (n, default, accepts), f in zip(spec.options.describe(), fields, strict=True):
            changes = "yes" if f.metadata.get("affects", True) else "no"
            out.append(f"| `{n}` | `{default}` | {accepts} | {changes} | {f.metadata.get('help', '')} |")
        out.append("")
    return "\n".join(out)
