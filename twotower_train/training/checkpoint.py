"""Atomic, resumable, reshardable distributed checkpoints (Megatron ``dist_checkpointing``).

Layout of a checkpoint root::

    iter_0000040/          one complete checkpoint (torch_dist format + meta.json)
    iter_0000080/
    latest                 text file: the name of the newest complete checkpoint

What one checkpoint holds (one ``dist_checkpointing.save`` of a sharded state dict):

* ``model`` — the objective's :meth:`~twotower_train.training.objectives.Objective.checkpoint_state`
  (by default the whole model; a two-tower objective may leave its frozen tower out and record a
  ``frozen_reference`` instead: an identity compared on load — the backbone checkpoint's content
  fingerprint, :mod:`~twotower_train.training.fingerprint` — and its location, absolute and
  relative to the checkpoint, used only to find it again);
* ``optimizer`` — moments (and fp32 main weights) as sharded tensors shaped like their
  parameters, so a checkpoint saved at TP=2 / EP=2 / DP=4 loads at TP=1 / DP=1 (Megatron's
  optimizer on GPU: its own ``sharded_state_dict``, distributed-optimizer format
  ``fully_reshardable``; see :mod:`twotower_train.training.megatron_optimizer`);
* ``scheduler`` (the active phase's WSD scheduler), ``train_state`` (next step, consumed samples
  per phase), ``layout`` (parallel sizes), ``config`` (the resolved recipe) — common values;
* ``rng`` — per rank: Python, NumPy, torch (CPU and CUDA), Megatron's RNG-tracker streams and the
  trainer's corruption generator. Restored only when the parallel layout is unchanged (a
  resharded resume re-seeds; the trainer seeds the corruption generator per micro-batch from
  the step and the position in the global batch, so data and corruption stay identical anyway).

Atomicity: a save writes ``iter_XXXXXXX.tmp/``, then (rank 0) ``meta.json``, renames the folder
to ``iter_XXXXXXX/`` and only then replaces ``latest`` (:func:`twotower_train.atomic_write.write_text`).
Older checkpoints beyond ``keep_last`` are deleted after that. A crash at any point leaves
``latest`` naming the previous complete checkpoint; leftover ``*.tmp`` folders are ignored by
:func:`find_latest` and removed by the next save.

Preemption: dist_checkpointing's writer reports its results through a ``multiprocessing``
manager process. It is started with SIGTERM / SIGUSR1 blocked (:func:`_start_writer_queue`), so a
signal sent to the whole process group (``timeout``, ``kill -TERM -PGID``, schedulers) cannot kill
it in the middle of the checkpoint the trainer writes on that very signal.

Loading problems (a missing, interrupted or damaged checkpoint — :mod:`integrity` checks the
file sizes ``meta.json`` records — or tensors that do not fit the model) raise
:class:`~twotower_train.training.checkpoint_layout.CheckpointError` with one line naming the path
and the fix. Finding checkpoints in a folder (``latest``, ``iter_*``) is
:mod:`~twotower_train.training.checkpoint_layout`; the frozen-weights reference a checkpoint
records, :mod:`~twotower_train.training.frozen_reference`.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing, parallel_state, tensor_parallel
from megatron.core.dist_checkpointing.mapping import ShardedObject

from twotower_train import backends
from twotower_train.atomic_write import write_text
from twotower_train.training import integrity
from twotower_train.training.checkpoint_layout import (
    LATEST,
    META,
    CheckpointError,
    complete_checkpoints,
    describe_incomplete,
)
from twotower_train.training.frozen_reference import located_reference, verify_frozen_reference

__all__ = [
    "LoadedCheckpoint",
    "check_intact",
    "TrainState",
    "load_checkpoint",
    "load_model_state",
    "read_common_state",
    "read_train_state",
    "save_checkpoint",
]


@dataclass
class TrainState:
    """Where the run is: everything the curriculum and the data need to continue exactly."""

    step: int = 0
    """Next global step to run (= steps completed)."""
    consumed_samples: dict[str, int] = field(default_factory=dict)
    """Phase name -> samples consumed in that phase."""
    scheduler_phase: int | None = None
    """Index of the phase whose scheduler state is saved (the phase of step ``step - 1``)."""


@dataclass
class LoadedCheckpoint:
    path: Path
    state: TrainState
    scheduler: dict[str, Any] | None
    config: dict[str, Any]
    rng_restored: bool


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _layout() -> dict[str, int]:
    return {
        "world": dist.get_world_size() if dist.is_initialized() else 1,
        "tensor_parallel": parallel_state.get_tensor_model_parallel_world_size(),
        "pipeline_parallel": parallel_state.get_pipeline_model_parallel_world_size(),
        "expert_parallel": parallel_state.get_expert_model_parallel_world_size(),
        "expert_tensor_parallel": parallel_state.get_expert_tensor_parallel_world_size(),
        "data_parallel": parallel_state.get_data_parallel_world_size(),
    }


def _rng_states(generator: torch.Generator) -> dict[str, Any]:
    states = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "tracker": tensor_parallel.get_cuda_rng_tracker().get_states(),
        "generator": generator.get_state(),
    }
    if backends.cuda_available():
        states["cuda"] = torch.cuda.get_rng_state()
    return states


def _set_rng_states(states: dict[str, Any], generator: torch.Generator) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    tensor_parallel.get_cuda_rng_tracker().set_states(states["tracker"])
    generator.set_state(states["generator"])
    if "cuda" in states and backends.cuda_available():
        torch.cuda.set_rng_state(states["cuda"])


def _rng_object(data: Any) -> ShardedObject:
    world = dist.get_world_size() if dist.is_initialized() else 1
    return ShardedObject("rng_state", data, (world,), (_rank(),), replica_id=0)


def _start_writer_queue() -> None:
    """Start dist_checkpointing's result queue (a manager process, spawned once on first use)
    with the preemption signals and Ctrl-C's SIGINT blocked: the child inherits the mask, so a
    SIGTERM or Ctrl-C to the whole process group leaves it alive to finish the save. The
    trainer's own handler still gets a signal that arrives meanwhile: it is delivered when the
    mask is restored."""
    from multiprocessing import resource_tracker

    from megatron.core.dist_checkpointing.strategies import filesystem_async

    # Spawning the manager starts multiprocessing's resource tracker first, which unblocks
    # SIGTERM in this thread when it is done; started beforehand, it leaves the mask alone.
    resource_tracker.ensure_running()
    blocked = {signal.SIGTERM, signal.SIGUSR1, signal.SIGINT}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
    try:
        filesystem_async.get_write_results_queue()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _write_shards(state_dict: dict, directory: Path) -> None:
    """The one call that writes tensor data (tests inject crashes here)."""
    _start_writer_queue()
    dist_checkpointing.save(state_dict, str(directory))


_LOAD_DETAIL = re.compile(
    r"(Global shape mismatch[^\n]*|[^\n]*(?:[Mm]issing|[Uu]nexpected) keys?[^\n]*)"
)


def _load_sharded(request: dict, path: Path) -> dict:
    """``dist_checkpointing.load`` with its errors as one :class:`CheckpointError` line (they
    arrive wrapped in torch's per-rank traceback text)."""
    from megatron.core.dist_checkpointing.core import CheckpointingException
    from torch.distributed.checkpoint.api import CheckpointException

    try:
        return dist_checkpointing.load(request, str(path))
    except (CheckpointingException, CheckpointException) as error:
        text = str(error)
        if "'denoiser.adaln.tables'" in text:  # the checkpoint's keys, listed by the error
            raise CheckpointError(
                f"cannot load {path}: it holds the pre-release adaLN-single "
                "(denoiser.adaln.tables); this version trains only the released formulation "
                "(t_embedder / t_block / scale_shift_tables) — retrain stage 2 from its backbone"
            ) from None
        found = _LOAD_DETAIL.search(text)
        lines = [line for line in text.splitlines() if line.strip()]
        detail = found.group(1) if found else lines[-1] if lines else type(error).__name__
        raise CheckpointError(
            f"cannot load {path} into this model: {detail.strip()}; the checkpoint was saved for "
            "another model or objective (compare its recipe.yaml with this recipe)"
        ) from None


def load_model_state(path: str | Path, sharded_state_dict: dict) -> dict:
    """Only the model tensors of checkpoint ``path``, resharded into ``sharded_state_dict``
    (e.g. a stage-1 backbone loaded into a two-tower model at any TP/EP)."""
    check_intact(path)
    return _load_sharded({"model": sharded_state_dict}, Path(path))["model"]


def save_checkpoint(
    root: str | Path,
    *,
    objective: Any,
    model: torch.nn.Module,
    optimizer: Any,
    scheduler: Any,
    state: TrainState,
    generator: torch.Generator,
    config: dict[str, Any],
    keep_last: int = 2,
) -> Path:
    """Save atomically as ``root/iter_{state.step:07d}`` and point ``latest`` at it (collective)."""
    root = Path(root)
    final = root / f"iter_{state.step:07d}"
    tmp = root / f"{final.name}.tmp"
    if final.exists():
        if (final / META).is_file() and integrity.damage(final) is None:
            return final  # e.g. a preemption save right after an interval save
        _barrier()  # every rank has looked before rank 0 moves the damaged one aside (kept)
        if _rank() == 0:
            final.rename(final.with_name(f"{final.name}.damaged-{int(time.time())}"))
    if _rank() == 0:
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob("iter_*.tmp"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir()
    _barrier()
    model_sd = objective.checkpoint_state(model)
    state_dict = {
        "model": model_sd,
        "optimizer": optimizer.sharded_state_dict(model_sd, is_loading=False),
        "rng": _rng_object(_rng_states(generator)),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "train_state": asdict(state),
        "layout": _layout(),
        "config": config,
        "frozen_reference": located_reference(objective.frozen_reference(model), final),
    }
    _write_shards(state_dict, tmp)
    _barrier()
    if _rank() == 0:
        meta = {
            "step": state.step,
            "objective": getattr(objective, "name", None),
            "saved_at": time.time(),
            "layout": _layout(),
            integrity.MANIFEST_KEY: integrity.file_manifest(tmp),  # all ranks have written
        }
        write_text(tmp / META, json.dumps(meta, indent=1), durable=True)
        os.rename(tmp, final)
        write_text(root / LATEST, final.name + "\n", durable=True)
        for old in complete_checkpoints(root)[:-keep_last]:
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
    _barrier()
    return final


def check_intact(path: str | Path) -> None:
    """Raise one :class:`CheckpointError` line if a file of checkpoint ``path`` is missing or
    truncated (:mod:`~twotower_train.training.integrity`), naming the newest intact one."""
    report = integrity.damage_report(Path(path))
    if report is not None:
        raise CheckpointError(report)


def read_common_state(path: str | Path) -> dict[str, Any]:
    """A checkpoint's common values (recipe, train state, layout, ...), without tensors; the
    checkpoint is checked whole first (:func:`check_intact`)."""
    check_intact(path)
    return dist_checkpointing.load_common_state_dict(str(path))


def read_train_state(path: str | Path) -> TrainState:
    """The train state of a checkpoint, without loading tensors."""
    return TrainState(**read_common_state(path)["train_state"])


def load_checkpoint(
    path: str | Path,
    *,
    objective: Any,
    model: torch.nn.Module,
    optimizer: Any,
    generator: torch.Generator,
) -> LoadedCheckpoint:
    """Load model, optimizer and (same layout only) RNG states in place (collective).

    The scheduler state is returned for the trainer to load into the phase's fresh scheduler.
    """
    path = Path(path)
    if not (path / META).is_file():
        raise CheckpointError(describe_incomplete(path))
    common = read_common_state(path)
    verify_frozen_reference(path, common, objective, model)
    same_layout = common["layout"] == _layout()
    model_sd = objective.checkpoint_state(model)
    request = {
        "model": model_sd,
        "optimizer": optimizer.sharded_state_dict(model_sd, is_loading=True),
    }
    if same_layout:
        request["rng"] = _rng_object(None)
    loaded = _load_sharded(request, path)
    objective.load_checkpoint_state(model, loaded["model"])
    optimizer.load_state_dict(loaded["optimizer"])
    if same_layout:
        _set_rng_states(loaded["rng"], generator)
    return LoadedCheckpoint(
        path=path,
        state=TrainState(**common["train_state"]),
        scheduler=common["scheduler"],
        config=common["config"],
        rng_restored=same_layout,
    )
