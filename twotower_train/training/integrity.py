"""Is a checkpoint folder whole? Checked before anything reads it (resume, stage-2 backbone,
export, generation, evaluation), so a damaged file gives one line naming it and the newest
intact checkpoint next to it instead of a deserialisation traceback.

A save records every file of the finished ``iter_XXXXXXX/`` folder with its size in
``meta.json`` (``files``; written last, so it describes the complete folder). A file that is
missing or whose size differs — a truncated ``.metadata``, ``metadata.json`` or ``.distcp`` shard,
the model's or the optimizer's — makes the checkpoint *damaged*. Sizes catch what copies, full
disks and interrupted transfers do; a same-size overwrite inside a file is not detected.
Checkpoints written before the manifest existed get the minimal check (the files every
``torch_dist`` checkpoint has are there and not empty).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

__all__ = ["MANIFEST_KEY", "damage", "damage_report", "file_manifest", "newest_intact"]

MANIFEST_KEY = "files"
META = "meta.json"
_ALWAYS = (".metadata", "metadata.json")  # what every torch_dist checkpoint holds
_ITER = re.compile(r"^iter_\d{7}$")


def file_manifest(folder: Path) -> dict[str, int]:
    """Every file under ``folder`` (relative POSIX name → size in bytes), ``meta.json`` aside."""
    found = {}
    for dirpath, _, names in os.walk(folder):
        for name in names:
            path = Path(dirpath) / name
            rel = path.relative_to(folder).as_posix()
            if rel != META:
                found[rel] = path.stat().st_size
    return dict(sorted(found.items()))


def damage(folder: Path) -> str | None:
    """What is wrong with complete-looking checkpoint ``folder`` (one phrase naming the file),
    or None when it is intact."""
    folder = Path(folder)
    try:
        meta = json.loads((folder / META).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        return f"{folder / META} is unreadable ({type(error).__name__})"
    files = meta.get(MANIFEST_KEY) if isinstance(meta, dict) else None
    if not isinstance(files, dict):
        files = dict.fromkeys(_ALWAYS)
    for name, size in files.items():
        path = folder / name
        if not path.is_file():
            return f"{path} is missing"
        actual = path.stat().st_size
        if size is None and actual == 0:
            return f"{path} is empty"
        if size is not None and actual != size:
            how = "truncated" if actual < size else "longer than saved"
            return f"{path} is {how} ({actual} of {size} bytes)"
    return None


def newest_intact(root: Path, *, before: Path | None = None) -> Path | None:
    """The newest intact ``iter_*`` checkpoint in ``root`` (older than ``before`` if given)."""
    root = Path(root)
    if not root.is_dir():
        return None
    candidates = sorted(
        (p for p in root.iterdir() if _ITER.match(p.name) and (p / META).is_file()),
        key=lambda p: p.name,
        reverse=True,
    )
    for path in candidates:
        if before is not None and path.name >= Path(before).name:
            continue
        if damage(path) is None:
            return path
    return None


def damage_report(folder: Path) -> str | None:
    """One line for a damaged checkpoint: the file and the newest intact checkpoint beside it
    (None when ``folder`` is intact)."""
    problem = damage(folder)
    if problem is None:
        return None
    previous = newest_intact(Path(folder).parent, before=Path(folder))
    fix = (
        f"the newest intact checkpoint there is {previous}; use that one"
        if previous
        else "no intact checkpoint is left next to it; copy the folder again from its source"
    )
    return f"checkpoint {folder} is damaged: {problem}; {fix}"
