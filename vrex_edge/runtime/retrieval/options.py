"""Typed policy options: each policy declares a frozen dataclass, parsed from `key=value` in one place.

A field is declared with `opt(default, ...)`: its annotation is the type (bool, int, float, str,
`int | float`, `X | None`), and the metadata holds the accepted range or choices and whether the
option changes results (a kept KV store refuses to resume when such an option differs).
`Options.parse` turns a mapping of CLI strings or Python values into the dataclass; anything it
cannot accept is a one-line ConfigError naming the option, the value and what it accepts.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from vrex_edge.errors import ConfigError

OptionsT = TypeVar("OptionsT", bound="Options")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def opt(
    default: Any,
    *,
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
    choices: tuple[str, ...] | None = None,
    affects: bool = True,
    absent: Any = None,
    help: str = "",
) -> Any:
    """A policy option: default, inclusive range [lo, hi] (lo_open: (lo, hi]), choices for strings,
    affects: whether a different value can change outputs (resume compares those), absent: the value
    a stream kept before the option existed ran with (None: the default)."""
    meta = {
        "lo": lo,
        "hi": hi,
        "lo_open": lo_open,
        "choices": choices,
        "affects": affects,
        "absent": absent,
        "help": help,
    }
    return field(default=default, metadata=meta)


def parse_pairs(pairs: Iterable[str], *, where: str = "--opt") -> dict[str, str]:
    """['tau=0.95', 'keys=pre'] -> {'tau': '0.95', 'keys': 'pre'} ('-' in a key reads as '_').

    Values stay text: the policy's Options dataclass gives them their type."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{where} expects key=value, got {pair!r}")
        out[key.strip().replace("-", "_")] = raw.strip()
    return out


def _accepts(tp: Any, meta: Mapping[str, Any]) -> str:
    """What a field accepts, in words (for error messages and help)."""
    if meta["choices"]:
        return "one of " + ", ".join(meta["choices"])
    lo, hi = meta["lo"], meta["hi"]
    kind = {
        bool: "a boolean (0/1, true/false)",
        int: "an integer",
        float: "a number",
        str: "a name",
        "count": "a count or a fraction",
    }.get(tp, "a value")
    if lo is not None and hi is not None:
        return f"{kind} in {'(' if meta['lo_open'] else '['}{lo:g}, {hi:g}]"
    if lo is not None:
        return f"{kind} {'>' if meta['lo_open'] else '>='} {lo:g}"
    return kind


def _coerce(tp: Any, value: Any) -> Any:
    """value (text from a CLI, or a Python value) -> tp, or raise ValueError."""
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.lower() in _TRUE + _FALSE:
            return value.lower() in _TRUE
        raise ValueError
    if tp is int:
        if isinstance(value, bool):
            raise ValueError
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            return int(value.strip())
        raise ValueError
    if tp is float:
        if isinstance(value, bool):
            raise ValueError
        x = float(value) if isinstance(value, int | float | str) else math.nan
        if not math.isfinite(x):
            raise ValueError
        return x
    if tp is str:
        if not isinstance(value, str):
            raise ValueError
        return value.strip()
    raise TypeError(f"unsupported option type {tp}")


@dataclass(frozen=True)
class Options:
    """Base of every policy's options (subclasses set `policy` and declare fields with `opt`)."""

    policy = "policy"

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            object.__setattr__(self, f.name, self._check(f, hints[f.name], value))

    def _check(self, f: dataclasses.Field, tp: Any, value: Any) -> Any:
        args = typing.get_args(tp)
        optional = type(None) in args
        if optional and (value is None or (isinstance(value, str) and value.lower() in ("", "none"))):
            return None
        kinds = [a for a in args if a is not type(None)] or [tp]
        if kinds == [int, float]:  # a count or a fraction: '64' is an int, '0.2' a float
            kinds = [float] if isinstance(value, float) or (isinstance(value, str) and "." in value) else [int]
        meta = f.metadata
        try:
            x = _coerce(kinds[0], value)
        except (ValueError, TypeError):
            raise self.error(f.name, value, _accepts(kinds[0], meta)) from None
        bad = (
            (meta["choices"] is not None and x not in meta["choices"])
            or (meta["lo"] is not None and (x <= meta["lo"] if meta["lo_open"] else x < meta["lo"]))
            or (meta["hi"] is not None and x > meta["hi"])
        )
        if bad:
            raise self.error(f.name, value, _accepts(kinds[0], meta))
        return x

    @classmethod
    def error(cls, name: str, value: Any, accepts: str) -> ConfigError:
        return ConfigError(f"{cls.policy}: option {name} must be {accepts}, got {value!r}")

    @classmethod
    def parse(cls: type[OptionsT], values: Mapping[str, Any] | None = None) -> OptionsT:
        """A mapping of option names to text or Python values -> the validated options."""
        values = dict(values or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown and not known:
            raise ConfigError(
                f"{cls.policy}: unknown option(s) {', '.join(unknown)}: the {cls.policy} policy takes no options"
            )
        if unknown:
            raise ConfigError(
                f"{cls.policy}: unknown option(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})"
            )
        return cls(**values)

    def resolved(self) -> dict[str, Any]:
        """Every option with its value (defaults included)."""
        return dataclasses.asdict(self)

    @classmethod
    def result_options(cls) -> tuple[str, ...]:
        """The names of the options that can change outputs."""
        return tuple(f.name for f in dataclasses.fields(cls) if f.metadata.get("affects", True))

    @classmethod
    def absent_values(cls) -> dict[str, Any]:
        """What a stream kept before an option existed ran with, per option that was added with another
        default than its behaviour then (resume compares a kept stream's options with these filled in)."""
        return {f.name: f.metadata["absent"] for f in dataclasses.fields(cls) if f.metadata.get("absent") is not None}

    @classmethod
    def describe(cls) -> list[tuple[str, str, str]]:
        """(name, default, what it accepts) per option, for help texts and docs."""
        hints = typing.get_type_hints(cls)
        rows = []
        for f in dataclasses.fields(cls):
            args = [a for a in typing.get_args(hints[f.name]) if a is not type(None)] or [hints[f.name]]
            rows.append((f.name, repr(f.default), _accepts("count" if args == [int, float] else args[0], f.metadata)))
        return rows


@dataclass(frozen=True)
class NoOptions(Options):
    """A policy without options."""


@dataclass(frozen=True)
class WindowedOptions(Options):
    """The always-attended tokens every windowed policy has (retrieval/base.py)."""

    sink: int = opt(32, lo=0, help="first tokens always attended")
    recent: int = opt(128, lo=0, help="last tokens always attended")
