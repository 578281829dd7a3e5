"""The frozen weights a checkpoint was trained against but does not store (a stage-2 checkpoint
leaves its frozen context tower out): the reference it records, verifying it on load and
finding the weights again after the run folder moved. The reference itself comes from the
objective (:meth:`~twotower_train.training.objectives.Objective.frozen_reference`; the content
fingerprint is :mod:`~twotower_train.training.fingerprint`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from twotower_train.training.checkpoint_layout import CheckpointError

LOCATION_KEYS = ("path", "relative_path", "option")
"""Keys of a frozen reference that say where the frozen weights were, not what they are: kept
for finding them again, never compared."""


def _identity(reference: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in reference.items() if k not in LOCATION_KEYS}


def _describe(reference: dict[str, Any]) -> str:
    identity = ", ".join(f"{k} {str(v)[:16]}" for k, v in sorted(_identity(reference).items()))
    return f"{reference.get('path', '?')} ({identity})"


def verify_frozen_reference(
    path: Path,
    common: dict[str, Any],
    objective: Any,
    model: torch.nn.Module,
    *,
    option: str | None = None,
) -> None:
    """The frozen weights a checkpoint was saved against (its common state) are this model's.

    Only the identity (e.g. the backbone checkpoint's fingerprint) is compared, so a moved
    backbone folder still verifies; a different one fails with one line naming the key to set
    (``option``: the command's own option for it, default the recipe key).
    """
    saved = common.get("frozen_reference") or {}
    current = objective.frozen_reference(model)
    if _identity(saved) == _identity(current):
        return
    # The option of the command at hand (e.g. export-hf's --backbone) or the recipe key.
    option = option or current.get("option") or saved.get("option") or "the frozen-weights option"
    if not saved:
        raise CheckpointError(
            f"{path} stores the whole model (no frozen reference) but this run loads frozen "
            f"weights from {_describe(current)}; set {option}=null to resume it"
        )
    now = f"this run has {_describe(current)}" if current else "this run has none"
    raise CheckpointError(
        f"{path} was trained against frozen weights {_describe(saved)} but {now}; set "
        f"{option} to the checkpoint that run started from"
    )


def locate_frozen_reference(path: Path, common: dict[str, Any]) -> Path | None:
    """Where the frozen weights of checkpoint ``path`` are now: at their recorded place relative
    to the checkpoint (a run tree that moved as a whole), else at their recorded absolute path;
    None if neither exists (or there is no reference)."""
    reference = common.get("frozen_reference") or {}
    candidates = []
    if "relative_path" in reference:
        candidates.append(Path(os.path.normpath(Path(path).resolve() / reference["relative_path"])))
    if "path" in reference:
        candidates.append(Path(reference["path"]))
    return next((c for c in candidates if c.exists()), None)


def located_reference(reference: dict[str, Any], checkpoint_dir: Path) -> dict[str, Any]:
    """The reference plus its path relative to the checkpoint being written (found again by
    :func:`locate_frozen_reference` after the run folder moved)."""
    if "path" not in reference:
        return reference
    relative = os.path.relpath(Path(reference["path"]).resolve(), checkpoint_dir.resolve())
    return {**reference, "relative_path": relative}
