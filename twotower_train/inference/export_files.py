"""Is a Hugging Face model folder's weight data whole? Read by every command that loads an export
(``twotower-generate``, the lm-eval adapter, ``twotower-convert import-*``) before the loader
runs, so a missing or truncated shard is one line naming the file instead of a loader traceback.

Only the safetensors headers are read: each lists its tensors' byte ranges, which say how long
the file must be.
"""

from __future__ import annotations

import json
from pathlib import Path

from twotower_train.errors import UserError

__all__ = ["SAFETENSORS_INDEX", "SAFETENSORS_SINGLE", "check_export_folder", "shard_damage"]

SAFETENSORS_INDEX = "model.safetensors.index.json"
SAFETENSORS_SINGLE = "model.safetensors"


def shard_damage(file: Path) -> str | None:
    """Why safetensors ``file`` is not whole (missing, truncated, not safetensors), or None.

    Reads only the header: its tensors' byte ranges say how long the file must be."""
    if not file.is_file():
        return f"{file} is missing"
    size = file.stat().st_size
    try:
        with open(file, "rb") as stream:
            length = int.from_bytes(stream.read(8), "little")
            if size < 8 or length > size - 8:
                return f"{file} is truncated ({size} bytes, its header alone says more)"
            header = json.loads(stream.read(length))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return f"{file} has no readable safetensors header"
    ends = [entry["data_offsets"][1] for name, entry in header.items() if name != "__metadata__"]
    expected = 8 + length + max(ends, default=0)
    if size != expected:
        how = "truncated" if size < expected else "longer than its header says"
        return f"{file} is {how} ({size} of {expected} bytes)"
    return None


def check_export_folder(path: Path) -> dict[str, str] | None:
    """The folder's index ``weight_map`` (tensor → shard file) after checking the index and every
    shard it lists, or None for a single ``model.safetensors`` (checked too); one
    :class:`UserError` line naming the damaged file otherwise."""
    path = Path(path)
    index = path / SAFETENSORS_INDEX
    again = "export the folder again or copy it again from its source"
    if not index.is_file():
        single = path / SAFETENSORS_SINGLE
        if not single.is_file():
            raise UserError(f"neither {single} nor {index} found")
        if (problem := shard_damage(single)) is not None:
            raise UserError(f"{problem}; {again}")
        return None
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map")
    except (UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        raise UserError(f"{index} is not a readable safetensors index; {again}") from None
    if not isinstance(weight_map, dict):
        raise UserError(f"{index} has no 'weight_map'")
    for file in sorted(set(weight_map.values())):
        if (problem := shard_damage(path / file)) is not None:
            raise UserError(f"shard listed in {index.name}: {problem}; {again}")
    return weight_map
