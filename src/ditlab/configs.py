"""Dataclass configs that round-trip through plain JSON dicts and reject unknown fields by name.

Every ditlab config (DiTConfig, TrainConfig, ObjectiveSpec, AblationConfig, DyDiT options) mixes this in,
so a typo in a config file or an override fails at once with the list of valid fields, never silently.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import numbers
import os
import types
import typing
from pathlib import Path
from typing import ClassVar


class DictConfig:
    """to_dict / from_dict / replace / load for a dataclass; `_what` names its fields in errors."""

    _what: ClassVar[str] = "option"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def check_fields(cls, d: dict) -> None:
        """Refuse unknown fields and values of the wrong JSON type (a config file is read from strangers too:
        a list where a number belongs must be refused by name, not fail deep inside the code using it)."""
        if not isinstance(d, dict):
            raise ValueError(f"expected an object of {cls._what}s (a JSON dict), got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown {cls._what}(s) {unknown}; valid: {', '.join(sorted(known))}")
        hints = _hints(cls)
        for name, value in d.items():
            if name in hints and not _fits(value, hints[name]):
                raise ValueError(f"{cls._what} {name!r} must be {_describe(hints[name])}, got {value!r}")

    @classmethod
    def from_dict(cls, d: dict):
        cls.check_fields(d)
        return cls(**d)

    def replace(self, **overrides):
        return type(self).from_dict({**self.to_dict(), **overrides})

    @classmethod
    def load(cls, path: str | Path):
        """Read a JSON file of fields (never executed: configs are data)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} does not exist")
        try:
            d = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"config file {path} is not valid JSON: {e}") from None
        try:
            return cls.from_dict(d)
        except (ValueError, TypeError) as e:  # a field's check in __post_init__ (ranges, choices)
            raise ValueError(f"config file {path}: {e}") from e


@functools.cache
def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def _fits(value, hint) -> bool:
    """Whether a JSON-like value has the type a field's annotation asks for (ints pass as floats, lists as
    tuples, paths as strings; element types and unknown annotations are not checked)."""
    origin = typing.get_origin(hint)
    if isinstance(hint, types.UnionType) or origin is typing.Union:
        return any(_fits(value, h) for h in typing.get_args(hint))
    kind = origin or hint
    if kind is type(None):
        return value is None
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:  # numpy integers too (code passes them); never a bool
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    if kind in (list, tuple):  # or the comma-separated text some configs accept for a list
        return isinstance(value, (list, tuple, str))
    if kind is str:  # paths given by code read as their text
        return isinstance(value, (str, os.PathLike))
    if kind is dict:
        return isinstance(value, dict)
    return True


def _describe(hint) -> str:
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return " or ".join(_describe(h) for h in typing.get_args(hint))
    kind = typing.get_origin(hint) or hint
    names = {type(None): "null", bool: "true/false", int: "an integer", float: "a number", str: "a string"}
    return names.get(kind, f"a {getattr(kind, '__name__', kind)}")
