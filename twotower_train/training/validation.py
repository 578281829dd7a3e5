"""The two checks every recipe section repeats, with the project's error wording.

Recipe validation (:mod:`twotower_train.training.config`, :mod:`~twotower_train.training.curriculum`)
reports every problem as one :class:`~twotower_train.errors.ConfigError` that names the key.
"""

from __future__ import annotations

import difflib
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
