"""The released-layout stand-in folder of ``scripts/make_released_standin.py`` (loaded from the
script, so tests and the docs' walk-through build the same folder): two transformers NemotronH
models under the released names + random time tensors, as NVIDIA ships the folder."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from safetensors.torch import load_file

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "make_released_standin.py"
_spec = importlib.util.spec_from_file_location("make_released_standin", SCRIPT)
standin = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(standin)


def folder_tensors(folder: Path) -> dict:
    """Every tensor of a safetensors folder, by name."""
    out = {}
    for shard in sorted(folder.glob("*.safetensors")):
        out.update(load_file(shard))
    return out
