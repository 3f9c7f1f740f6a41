"""Dataclass configs that round-trip through plain JSON dicts and reject unknown fields by name.

Every ditlab config (DiTConfig, TrainConfig, ObjectiveSpec, AblationConfig, DyDiT options) mixes this in,
so a typo in a config file or an override fails at once with the list of valid fields, never silently.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import ClassVar


class DictConfig:
    """to_dict / from_dict / replace / load for a dataclass; `_what` names its fields in errors."""

    _what: ClassVar[str] = "option"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def check_fields(cls, d: dict) -> None:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown {cls._what}(s) {unknown}; valid: {', '.join(sorted(known))}")

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
            return cls.from_dict(json.loads(path.read_text()))
        except json.JSONDecodeError as e:
            raise ValueError(f"config file {path} is not valid JSON: {e}") from None
