"""Load a trained model from a trainer checkpoint, for sampling and evaluation.

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
"""

from __future__ import annotations

from pathlib import Path

import torch
from megatron.core import dist_checkpointing, parallel_state

from twotower_train import distributed
from twotower_train.model.config import ConfigError, ParallelConfig
from twotower_train.training import checkpoint
from twotower_train.training.config import Precision, TrainConfig, from_container
from twotower_train.training.objectives import build_objective


def load_trained_model(
    path: str | Path,
    *,
    backbone_checkpoint: str | Path | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> tuple[torch.nn.Module, TrainConfig]:
    """(model in eval mode on ``device`` in ``dtype``, its training config) from a checkpoint
    root or ``iter_*`` folder.

    A checkpoint that keeps its frozen weights out (stage 2) finds them at
    ``backbone_checkpoint`` if given, else where it recorded them — relative to itself (the run
    tree moved as a whole), then the absolute path — and verifies their fingerprint.
    """
    resolved = checkpoint.resolve_checkpoint_dir(path)
    if resolved is None:
        raise ConfigError(f"{path} holds no complete checkpoint (no meta.json / latest)")
    common = dist_checkpointing.load_common_state_dict(str(resolved))
    cfg = from_container(common["config"], check_data=False)
    reference = common.get("frozen_reference") or {}
    if reference:
        frozen = backbone_checkpoint or checkpoint.locate_frozen_reference(resolved, common)
        option = reference.get("option", "objective.backbone_checkpoint")
        if frozen is None:
            raise checkpoint.CheckpointError(
                f"{resolved} was trained against frozen weights at {reference.get('path')}, "
                f"which are not there any more; pass backbone_checkpoint=<folder> "
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
    model = distributed.to_device(objective.build_model(cfg.model, parallel, dtype))
    checkpoint.verify_frozen_reference(resolved, common, objective, model)
    state = checkpoint.load_model_state(resolved, objective.checkpoint_state(model))
    objective.load_checkpoint_state(model, state)
    return distributed.to_device(model, device).eval(), cfg
