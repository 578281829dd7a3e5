"""The checks every recipe section repeats, with the project's error wording: unknown keys,
positive integers, and a mapping coerced field by field into a dataclass section.

Recipe validation (:mod:`twotower_train.training.config`, :mod:`~twotower_train.training.curriculum`)
reports every problem as one :class:`~twotower_train.errors.ConfigError` that names the key.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import types
import typing
from collections.abc import Mapping
from typing import Any

from twotower_train.errors import ConfigError


def reject_unknown(values: Mapping[str, Any], allowed: set[str], key: str) -> None:
    """Raise naming ``key`` and the unknown names (with the nearest valid one) if ``values``
    has keys outside ``allowed``."""
    unknown = sorted(str(k) for k in values if k not in allowed)
    if unknown:
        close = difflib.get_close_matches(unknown[0], sorted(allowed), n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ConfigError(
            f"{key or 'recipe'}: unknown key(s) {unknown}; {hint}valid keys: {sorted(allowed)}"
        )


def positive_int(value: Any, key: str) -> int:
    """``value`` as a positive int (YAML may read ``2.1e12`` as a float), else an error."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{key}={value!r} must be a positive integer")
    return value


def coerce(value: Any, annotation: Any, key: str) -> Any:
    """Check/convert one scalar field value against its annotation (enums by value)."""
    origin = typing.get_origin(annotation)
    if origin in (types.UnionType, typing.Union):
        args = typing.get_args(annotation)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return coerce(value, inner[0], key)
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        if isinstance(value, annotation):
            return value
        try:
            return annotation(value)
        except ValueError:
            raise ConfigError(
                f"{key}={value!r} is not one of {[m.value for m in annotation]}"
            ) from None
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}={value!r} must be true or false")
        return value
    if annotation is int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}={value!r} must be an integer")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}={value!r} must be a number")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}={value!r} must be a string")
        return value
    return value


def build_section(cls: type, values: Any, key: str) -> Any:
    """Build dataclass ``cls`` from a mapping, naming ``key.<field>`` in every error."""
    if values is None:
        values = {}
    if not isinstance(values, Mapping):
        raise ConfigError(f"{key} must be a mapping, got {type(values).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    reject_unknown(values, fields, key)
    kwargs = {name: coerce(v, hints[name], f"{key}.{name}") for name, v in values.items()}
    return cls(**kwargs)
