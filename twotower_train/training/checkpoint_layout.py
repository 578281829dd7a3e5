"""Where the checkpoints of a run are: the folder layout of a checkpoint root and finding the
newest complete checkpoint in it (files only; no torch). Saving and loading is
:mod:`twotower_train.training.checkpoint`.

Layout of a checkpoint root::

    iter_0000040/          one complete checkpoint (torch_dist format + meta.json)
    iter_0000080/
    latest                 text file: the name of the newest complete checkpoint
"""

from __future__ import annotations

import re
from pathlib import Path

from twotower_train.errors import UserError

_ITER = re.compile(r"^iter_(\d{7})$")
LATEST = "latest"
META = "meta.json"
TRAINER_STATE_FILE = META
"""Written last into a complete checkpoint: step, objective name, layout, time (JSON)."""


class CheckpointError(UserError, RuntimeError):
    """A checkpoint is missing, incomplete or does not match the run."""


def complete_checkpoints(root: Path) -> list[Path]:
    found = [p for p in root.iterdir() if _ITER.match(p.name) and (p / META).is_file()]
    return sorted(found, key=lambda p: p.name)


def find_latest(root: str | Path) -> Path | None:
    """The checkpoint ``root/latest`` names, or None when there is none yet."""
    root = Path(root)
    pointer = root / LATEST
    if not pointer.is_file():
        return None
    path = root / pointer.read_text().strip()
    if not (path / META).is_file():
        complete = complete_checkpoints(root)
        fix = (
            f"point checkpoint.load_from at {complete[-1]}, the newest complete one"
            if complete
            else "move the folder away to start a new run there"
        )
        raise CheckpointError(
            f"{pointer} names {path.name}, which is not a complete checkpoint; {fix}"
        )
    return path


def describe_incomplete(path: Path) -> str:
    """Why ``path`` (which exists) is not a loadable checkpoint, and which one is (one line)."""
    path = Path(path)
    if path.name.endswith(".tmp"):
        what, root = "an interrupted save (a .tmp folder)", path.parent
    elif _ITER.match(path.name):
        what, root = f"an incomplete checkpoint (no {META}: its save did not finish)", path.parent
    else:
        what, root = f"not a checkpoint (no `{LATEST}` file, no {META})", path
    complete = complete_checkpoints(root) if root.is_dir() else []
    fix = (
        f"the newest complete checkpoint there is {complete[-1]}"
        if complete
        else "point at a checkpoint folder (.../iter_XXXXXXX) or a root with a `latest` file"
    )
    return f"{path} is {what}; {fix}"


def resolve_checkpoint_dir(path: str | Path) -> Path | None:
    """A complete checkpoint folder from a checkpoint root (via ``latest``) or an ``iter_*``
    folder; None when there is none."""
    path = Path(path)
    if (path / META).is_file():
        return path
    if (path / LATEST).is_file():
        return find_latest(path)
    return None
