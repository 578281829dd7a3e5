"""Load a trained model from a trainer checkpoint or a Hugging Face export, for sampling and
evaluation.

The checkpoint carries the resolved recipe it was trained with; the model is rebuilt from it
(through the same objective that trained it, so a stage-2 checkpoint that stores only the
denoiser gets its frozen context tower from the referenced backbone checkpoint) and its weights
are loaded, resharded to the current TP/EP layout by ``dist_checkpointing``. The model lands on
``device`` (default :func:`twotower_train.distributed.device`) in ``dtype`` (default: the
precision it was trained in, ``optimizer.precision``).

    from twotower_train import distributed
    from twotower_train.inference.load import load_trained_model
    distributed.initialize(seed=0)
    model, cfg = load_trained_model("runs/demo/stage2/checkpoints")
    # on a GPU host: load_trained_model(path, device="cuda", dtype=torch.bfloat16)

:func:`load_for_decoding` is what the front ends (``twotower-generate``, the lm-eval adapter,
``benchmarks/generation.py``) call: a trainer checkpoint of a two-tower run or an exported
folder (``AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)``), each with its
tokenizer; both offer the :class:`~twotower_train.decoding.interface.DecodingModel` interface.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import torch
from megatron.core import parallel_state

from twotower_train import backends, distributed
from twotower_train.errors import ConfigError, UserError
from twotower_train.model.config import ParallelConfig
from twotower_train.training import checkpoint, checkpoint_layout, frozen_reference
from twotower_train.training.config import Precision, TrainConfig, from_container
from twotower_train.training.objectives import build_objective


def load_trained_model(
    path: str | Path,
    *,
    backbone_checkpoint: str | Path | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    backbone_option: str = "backbone_checkpoint=",
    context_only: bool = False,
) -> tuple[torch.nn.Module, TrainConfig]:
    """(model in eval mode on ``device`` in ``dtype``, its training config) from a checkpoint
    root or ``iter_*`` folder.

    A checkpoint that keeps its frozen weights out (stage 2) finds them at
    ``backbone_checkpoint`` if given, else where it recorded them — relative to itself (the run
    tree moved as a whole), then the absolute path — and verifies their fingerprint. Messages
    name ``backbone_option`` as the way to pass them (a command's own option, e.g. ``--backbone
    ``).

    A model that does not go to a GPU is built on the CPU, never on one. ``context_only``
    (a two-tower checkpoint): only the context tower's tensors are read, the denoiser's
    weights are on the ``meta`` device, and the model stays on the CPU for
    :func:`place` to move its context tower
    (:func:`~twotower_train.inference.context_only.load_context_tower`).
    """
    resolved = checkpoint_layout.resolve_checkpoint_dir(path)
    if resolved is None:
        raise ConfigError(f"{path} holds no complete checkpoint (no meta.json / latest)")
    common = checkpoint.read_common_state(resolved)
    cfg = from_container(common["config"], check_data=False)
    reference = common.get("frozen_reference") or {}
    if reference:
        frozen = backbone_checkpoint or frozen_reference.locate_frozen_reference(resolved, common)
        option = reference.get("option", "objective.backbone_checkpoint")
        if frozen is None:
            raise checkpoint_layout.CheckpointError(
                f"{resolved} was trained against frozen weights at {reference.get('path')}, "
                f"which are not there any more; pass {backbone_option}<folder> "
                f"(the run's {option})"
            )
        cfg.objective_options[option.removeprefix("objective.")] = str(frozen)
    objective = build_objective(cfg.objective_name, cfg.objective_options)
    # The layout of this process (set by distributed.initialize), not the one it trained at.
    parallel = ParallelConfig(
        tensor_parallel=parallel_state.get_tensor_model_parallel_world_size(),
        expert_parallel=parallel_state.get_expert_model_parallel_world_size(),
        expert_tensor_parallel=parallel_state.get_expert_tensor_parallel_world_size(),
    )
    if dtype is None:
        dtype = torch.bfloat16 if cfg.optimizer.precision is Precision.BF16 else torch.float32
    target = distributed.device() if device is None else torch.device(device)
    on_cpu = target.type != "cuda" or context_only  # built and filled where it will not stay
    with cpu_initialization(on_cpu):
        model = objective.build_model(cfg.model, parallel, dtype, context_only=context_only)
    if context_only and hasattr(model, "denoise_block"):  # the denoiser stays on meta
        model.context_tower.to("cpu")
    else:
        model = distributed.to_device(model, "cpu" if on_cpu else None)
    frozen_reference.verify_frozen_reference(
        resolved, common, objective, model, option=backbone_option.rstrip("= ")
    )
    if context_only:
        from twotower_train.inference.context_only import load_context_tower

        load_context_tower(model, resolved, objective, frozen=bool(reference))
        return model.eval(), cfg  # on the CPU (denoiser on meta): the caller places it
    state = checkpoint.load_model_state(resolved, objective.checkpoint_state(model))
    objective.load_checkpoint_state(model, state)
    return distributed.to_device(model, target).eval(), cfg


@contextlib.contextmanager
def cpu_initialization(active: bool = True) -> Iterator[None]:
    """Megatron allocates and initialises a model on the current GPU when CUDA is there
    (``transformer_config`` defaults ``use_cpu_initialization`` to "no CUDA"); inside this block
    (when ``active``) the models built get ``use_cpu_initialization=True`` and land in CPU
    memory instead — for one that goes elsewhere (the CPU of an export, a context-only load)
    and may not fit one GPU whole. Only the config default changes: checkpoint loading inside
    the block still sees CUDA (its process group is NCCL's)."""
    from twotower_train.model import backbone

    original = backbone.transformer_config
    if not active or not backends.cuda_available():
        yield
        return

    @functools.wraps(original)
    def on_cpu(*args, use_cpu_initialization=None, **kwargs):
        chosen = True if use_cpu_initialization is None else use_cpu_initialization
        return original(*args, use_cpu_initialization=chosen, **kwargs)

    # Every module that imported the function by name (e.g. model.two_tower) gets the wrapper.
    holders = [
        module
        for name, module in list(sys.modules.items())
        if name.startswith("twotower_train.")
        and getattr(module, "transformer_config", None) is original
    ]
    with contextlib.ExitStack() as stack:
        for module in holders:
            stack.enter_context(mock.patch.object(module, "transformer_config", on_cpu))
        yield


@dataclass
class LoadedModel:
    """A model the samplers can drive, its tokenizer and the ids the samplers need."""

    model: torch.nn.Module
    tokenizer: Any
    eos_token_id: int
    mask_token_id: int
    pad_token_id: int
    max_length: int
    """Longest sequence (prompt + generation) the model was built for."""
    block_size: int
    """The block size S the denoiser was trained at last (a trainer checkpoint's final
    curriculum phase, an export's ``config.block_size``): mask diffusion's default."""
    train_config: TrainConfig | None = None
    """The recipe a trainer checkpoint was trained with (None for an export)."""

    def sampler_ids(self) -> dict[str, int]:
        """The id knobs every generation mode takes (``mask_token_id`` where it applies)."""
        return {"eos_token_id": self.eos_token_id, "pad_token_id": self.pad_token_id}


def run_tokenizer(path: str | Path, cfg: TrainConfig, *, option: str) -> Path:
    """The tokenizer folder checkpoint ``path`` trained with, found again after a move.

    The recipe records ``data.tokenizer`` as it was given (usually relative to the directory the
    run started in). Tried in order: that path from here; the same path from the run's start
    directory, worked out from where the checkpoint is now and the ``checkpoint.dir`` the recipe
    recorded (a run tree that moved or is used from elsewhere). Otherwise one line naming
    ``option`` (the command's own tokenizer option)."""
    recorded = cfg.data.tokenizer
    if not recorded:
        raise UserError(f"{path} names no tokenizer (data.tokenizer); pass {option} DIR")
    candidates = [Path(recorded)]
    root = checkpoint_layout.resolve_checkpoint_dir(path)
    saved_root = Path(cfg.checkpoint.dir or "")
    if root is not None and not Path(recorded).is_absolute() and not saved_root.is_absolute():
        root = root.resolve().parent  # the checkpoint root (…/checkpoints)
        parts = saved_root.parts
        if parts and root.parts[-len(parts) :] == parts:
            start = Path(*root.parts[: len(root.parts) - len(parts)])
            candidates.append(start / recorded)
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    raise UserError(
        f"the tokenizer this checkpoint trained with ({recorded}, data.tokenizer) is not there "
        f"from {Path.cwd()} nor from the run's start folder; pass {option} DIR (the tokenizer "
        "folder the model was trained with)"
    )


def place(
    model,
    device: torch.device | str | None = None,
    denoiser_device: torch.device | str | None = None,
    context_only: bool = False,
):
    """``model`` (a :class:`~twotower_train.decoding.interface.DecodingModel`) with its context
    tower on ``device`` (default: where it is) and its denoiser on ``denoiser_device`` (default:
    with the context tower; ``context_only``: nowhere — its weights go to the ``meta`` device
    and free their memory). Nothing moves when nothing is asked."""
    if device is None and denoiser_device is None and not context_only:
        return model
    context = torch.device(device) if device is not None else model.context_device
    if context_only:
        denoiser = torch.device("meta")
    else:
        denoiser = torch.device(denoiser_device) if denoiser_device is not None else context
    return model.place_towers_on_devices(context, denoiser)


def load_for_decoding(
    path: str | Path,
    tokenizer: str | Path | None = None,
    *,
    backbone: str | Path | None = None,
    device: torch.device | str | None = None,
    denoiser_device: torch.device | str | None = None,
    context_only: bool = False,
    options: tuple[str, str] = ("tokenizer=", "backbone_checkpoint="),
) -> LoadedModel:
    """A two-tower trainer checkpoint or a Hugging Face export folder, with its tokenizer.

    The tokenizer defaults to the one the run trained with (``data.tokenizer`` of the
    checkpoint's recipe) or the export's own files. Initialises the model-parallel state for
    one process when nothing has yet. ``backbone``: where a stage-2 checkpoint's frozen
    backbone is now (default: where it recorded it). ``options``: how the caller spells the
    tokenizer and backbone options in its messages.

    Placement (:func:`place`): ``device`` — where the model goes (default: a checkpoint on
    ``distributed.device()``, an export where ``from_pretrained`` put it, the CPU);
    ``denoiser_device`` — the denoiser (and its adaLN) there instead, through the model's
    ``place_towers_on_devices``; ``context_only`` — read and place only the context tower and its
    head (AR decoding on one GPU; :mod:`~twotower_train.inference.context_only`): the
    denoiser's weights are never read (``meta`` device), only ``mode="ar"`` runs.
    """
    if context_only and denoiser_device is not None:
        raise UserError("context_only keeps no denoiser; drop the denoiser device")
    split = context_only or denoiser_device is not None
    from twotower_train.data.tokenizer import load_tokenizer

    path = Path(path)
    if checkpoint_layout.resolve_checkpoint_dir(path) is not None:
        if not parallel_state.model_parallel_is_initialized():
            distributed.initialize(seed=0)
        model, cfg = load_trained_model(
            path,
            backbone_checkpoint=backbone,
            backbone_option=options[1],
            device="cpu" if split else device,  # towers apart: each moves once, from the CPU
            context_only=context_only,  # the denoiser's tensors are not even read
        )
        if not hasattr(model, "denoise_block"):
            raise UserError(
                f"{path} is a {cfg.objective_name!r} (single-tower) checkpoint; decoding needs a "
                "two-tower checkpoint (a stage-2 run, objective=diffusion)"
            )
        if split:
            model = place(model, device, denoiser_device, context_only)
        ids, max_length = cfg.model, cfg.model.max_sequence_length
        block_size = cfg.trained_block_size
        tokenizer = load_tokenizer(
            tokenizer or run_tokenizer(path, cfg, option=options[0]), expected=None
        )
        train_config = cfg
    elif (path / "config.json").is_file():
        from transformers import AutoModelForCausalLM

        from twotower_train.inference.export_files import check_export_folder

        check_export_folder(path)  # a missing / truncated shard: one line, not a traceback

        if context_only:  # read the context tower's tensors only, straight to ``device``
            from twotower_train.inference.context_only import load_export_context_only

            model = load_export_context_only(path, device)
        else:
            model = AutoModelForCausalLM.from_pretrained(
                str(path), trust_remote_code=True, local_files_only=True
            ).eval()
            model = place(model, device, denoiser_device)
        ids, train_config = model.config, None
        max_length = ids.max_position_embeddings
        block_size = ids.block_size
        tokenizer = load_tokenizer(tokenizer or path, expected=None)
    else:
        raise UserError(
            f"{path} is neither a trainer checkpoint (meta.json or latest) nor a Hugging Face "
            "export (config.json); point to a stage-2 checkpoint folder or an exported model "
            "folder"
        )
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        eos_token_id=ids.eos_token_id,
        mask_token_id=ids.mask_token_id,
        pad_token_id=ids.pad_token_id,
        max_length=max_length,
        block_size=block_size,
        train_config=train_config,
    )
