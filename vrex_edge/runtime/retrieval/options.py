"""Option checking and shared per-session objects for the retrieval policies."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from vrex_edge.bundle import TextSpec
from vrex_edge.errors import ConfigError
from vrex_edge.runtime.retrieval.base import RopeTable
from vrex_edge.runtime.rope import Rope


def parse_pairs(pairs: Iterable[str], *, where: str = "--opt") -> dict[str, object]:
    """['tau=0.95', 'keys=pre'] -> {'tau': 0.95, 'keys': 'pre'}: numbers parsed, '-' in keys read as '_'."""
    opts: dict[str, object] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{where} expects key=value, got {pair!r}")
        val: object = raw
        for cast in (int, float):
            try:
                val = cast(raw)
                break
            except ValueError:
                continue
        opts[key.strip().replace("-", "_")] = val
    return opts


def check_options(policy: str, defaults: Mapping[str, object], options: Mapping[str, object]) -> dict[str, object]:
    """defaults updated by options; an unknown name is a ConfigError that lists the known ones."""
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise ConfigError(f"{policy}: unknown option(s) {', '.join(unknown)} (known: {', '.join(sorted(defaults))})")
    return {**defaults, **options}


def table_cache() -> Callable[[Rope, TextSpec], RopeTable]:
    """One compact-position cos/sin table per Rope, shared by the layers of a session."""
    tables: dict[int, tuple[Rope, RopeTable]] = {}

    def get(rope: Rope, text: TextSpec) -> RopeTable:
        if id(rope) not in tables:
            tables[id(rope)] = (rope, RopeTable(rope, text.max_positions))
        return tables[id(rope)][1]

    return get
