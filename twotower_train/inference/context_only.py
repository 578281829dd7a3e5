"""Context-tower-only loads, for AR decoding of a model whose two towers do not fit one GPU
(the Nano-scale card's AR use: one tower, its embeddings and ``context_lm_head``).

Only the context tower's tensors are read, from a trainer checkpoint
(:func:`load_context_tower`) or from an export folder's safetensors shards
(:func:`load_export_context_only`, lazily through ``safe_open`` and the index); the denoiser
and adaLN-single stay on the ``meta`` device (no memory, never read), so
:mod:`~twotower_train.inference.modes` refuses every mode but AR by name.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from twotower_train.errors import UserError
from twotower_train.training import checkpoint

CONTEXT = "context_tower."
"""The context tower's prefix in a ``TwoTowerModel`` state dict (its head included)."""
EXPORT_CONTEXT = ("context_tower.", "context_lm_head.")
"""The export's context tower and its head (the released layout)."""
_STACKED = re.compile(r"^(?P<stem>.*\.experts)\.(?P<proj>[a-z_]+)$")
"""A module's stacked routed experts (experts, out, in), stored one tensor per expert as
``{stem}.{j}.{proj}.weight``."""


def load_context_tower(model: Any, path: Path, objective: Any, *, frozen: bool) -> None:
    """Fill only ``model``'s context tower (a ``TwoTowerModel`` built on the CPU) from trainer
    checkpoint ``path``; the denoiser goes to the ``meta`` device first, unread.

    ``frozen``: the checkpoint keeps its frozen context tower out (a stage-2 run from a
    backbone checkpoint) — the tower came from the verified backbone checkpoint while the model
    was built, and nothing of ``path`` (the denoiser alone) is read."""
    if not hasattr(model, "denoise_block"):
        raise UserError(
            f"{path} is a single-tower checkpoint; a context-only load takes a two-tower one "
            "(load a single-tower checkpoint whole, it is one tower)"
        )
    model.place_towers(torch.device("cpu"), torch.device("meta"))
    if frozen:
        return
    request = {k: v for k, v in objective.checkpoint_state(model).items() if k.startswith(CONTEXT)}
    state = checkpoint.load_model_state(path, request)
    result = model.load_state_dict(state, strict=False)
    unfilled = [k for k in result.missing_keys if k.startswith(CONTEXT)]
    unfilled = [k for k in unfilled if not k.endswith("_extra_state")]
    if unfilled or result.unexpected_keys:
        raise UserError(
            f"{path} does not hold this model's context tower ({(unfilled or ['?'])[0]} not "
            "filled); load it whole to see why"
        )


def load_export_context_only(path: Path, device: torch.device | str | None = None):
    """An export folder's model with only the context tower and ``context_lm_head`` read (on
    ``device``, default the CPU), in the dtypes ``from_pretrained`` would give them (the
    config's ``dtype``); the rest of the model is on the ``meta`` device. The folder must have been checked (``check_export_folder``)."""
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    from twotower_train.inference.export_files import SAFETENSORS_SINGLE, check_export_folder

    config = AutoConfig.from_pretrained(str(path), trust_remote_code=True, local_files_only=True)
    with torch.device("meta"):  # in the dtypes ``from_pretrained`` gives each tensor
        model = AutoModelForCausalLM.from_config(
            config, trust_remote_code=True, dtype=getattr(config, "dtype", None)
        )
    if (path / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(str(path))
    files = check_export_folder(path)
    if files is None:  # one model.safetensors
        with safe_open(path / SAFETENSORS_SINGLE, framework="pt") as f:
            files = dict.fromkeys(f.keys(), SAFETENSORS_SINGLE)
    target = torch.device(device) if device is not None else torch.device("cpu")
    with contextlib.ExitStack() as stack:
        shards: dict[str, Any] = {}  # opened when first needed: a denoiser-only shard never is
        for prefix in EXPORT_CONTEXT:
            module = model.get_submodule(prefix.rstrip("."))
            state = {}
            for name, like in module.state_dict().items():  # one at a time, straight to target
                sources = _sources(prefix + name, files)
                tensors = []
                for source in sources:
                    file = files[source]
                    if file not in shards:
                        shards[file] = stack.enter_context(safe_open(path / file, framework="pt"))
                    tensors.append(shards[file].get_tensor(source))
                dtype = like.dtype if like.is_floating_point() else None
                state[name] = _assemble(tensors).to(target, dtype=dtype)
            module.load_state_dict(state, strict=True, assign=True)
    return model.eval()


def _sources(name: str, files: dict[str, str]) -> list[str]:
    """The folder's tensors that make module tensor ``name``: itself, or its routed experts."""
    if name in files:
        return [name]
    stacked = _STACKED.match(name)
    if stacked:
        stem, proj = stacked["stem"], stacked["proj"]
        experts = []
        while f"{stem}.{len(experts)}.{proj}.weight" in files:
            experts.append(f"{stem}.{len(experts)}.{proj}.weight")
        if experts:
            return experts
    raise UserError(f"the export has no tensor {name!r} of the context tower; export it again")


def _assemble(tensors: list[torch.Tensor]) -> torch.Tensor:
    """One tensor as itself; routed experts stacked (experts, out, in), as the module holds."""
    return tensors[0] if len(tensors) == 1 else torch.stack(tensors)
