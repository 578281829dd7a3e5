"""Trainer checkpoints ↔ Hugging Face folders (what ``twotower-convert`` runs).

* :func:`import_hf` — a ``nemotron_h`` folder → a stage-1 run folder ``OUT`` whose
  ``OUT/checkpoints`` is what ``objective.backbone_checkpoint`` accepts and stage-1 training
  resumes from (``output_dir=OUT``).
* :func:`import_twotower` — a two-tower export → a stage-2 run folder holding both towers and
  the adaLN (``objective.backbone_checkpoint: null``: the checkpoint is self-contained, so it
  never depends on where a backbone checkpoint lives); training continues with
  ``output_dir=OUT objective.backbone_checkpoint=null``.
* :func:`export_checkpoint` — a trainer checkpoint saved at any TP/EP, loaded at TP=1 on the
  CPU through :func:`~twotower_train.inference.load.load_trained_model` (so a stage-2
  checkpoint gets its frozen context tower through its verified backbone reference) → the
  two-tower export folder, converted and written one shard at a time
  (:func:`~twotower_train.convert.two_tower.export_plan`), or for a stage-1 checkpoint a plain
  ``nemotron_h`` folder stock transformers loads.

Imports write a complete trainer checkpoint (model, fresh optimizer state, step 0, the recipe
``--recipe`` with its model / parallelism / objective replaced by the imported ones) with the
trainer's own building blocks. At ``--tp``/``--ep`` > 1 (under torchrun) the TP=1 weights are
first saved with ``dist_checkpointing`` and loaded back into the sharded model: resharding is
dist_checkpointing's job. Outputs appear atomically (:mod:`~twotower_train.convert.hf_files`).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing

from twotower_train import distributed
from twotower_train.convert.hf_files import (
    DEFAULT_SHARD_BYTES,
    ConversionError,
    check_output,
    publish,
)
from twotower_train.convert.nemotron_h import load_hf_folder, load_megatron_state, save_hf_folder
from twotower_train.convert.released_layout import stream_into_model
from twotower_train.convert.two_tower import read_twotower_folder, save_twotower_folder
from twotower_train.errors import ConfigError
from twotower_train.model.config import BackboneConfig, ParallelConfig

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
CHECKPOINTS = "checkpoints"
"""The checkpoint root inside an imported run folder."""


# ---- import -----------------------------------------------------------------------------------


def import_hf(
    hf_dir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    tp: int = 1,
    ep: int = 1,
    recipe: str = "demo",
    overwrite: bool = False,
) -> Path:
    """A ``nemotron_h`` folder (Hub or ``save_pretrained`` layout) → stage-1 run folder ``out``."""
    out = Path(out)
    check_output(out, overwrite)
    cfg, state = load_hf_folder(hf_dir)
    return write_trainer_checkpoint(out, cfg, state, {"name": "ar"}, tp=tp, ep=ep, recipe=recipe)


def import_twotower(
    hf_dir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    tp: int = 1,
    ep: int = 1,
    recipe: str = "demo_twotower",
    overwrite: bool = False,
) -> Path:
    """A two-tower folder (the released layout as NVIDIA ships it, or one of our exports) → a
    self-contained stage-2 run folder ``out``. The folder is read shard by shard straight into
    the model (:func:`~twotower_train.convert.released_layout.stream_into_model`): a process
    holds the two towers once, plus one tensor of the folder at a time."""
    out = Path(out)
    check_output(out, overwrite)
    hf_dir = Path(hf_dir)
    cfg, _, files, old_layout = read_twotower_folder(hf_dir)
    # The mask id is the model's (config.json's mask_token_id; 3, the released code's, when the
    # folder has none, as NVIDIA's has not): cfg.mask_token_id, which the recipe's null means.
    objective = {"name": "diffusion", "backbone_checkpoint": None}

    def fill(model: torch.nn.Module) -> None:
        stream_into_model(model, hf_dir, files, cfg, old_layout=old_layout)

    return write_trainer_checkpoint(out, cfg, fill, objective, tp=tp, ep=ep, recipe=recipe)


TRAINING_NUMERICS = ("moe_router_dtype", "denoiser_scan_dtype")
"""Model fields an import takes from the recipe, not from the folder's config."""


def imported_recipe(
    recipe: str, cfg: BackboneConfig, out: Path, parallel: ParallelConfig, objective: dict
) -> dict[str, Any]:
    """The resolved recipe an imported checkpoint records: ``recipe`` with ``output_dir=out`` and
    the imported model (every field explicit), parallel layout and objective."""
    from omegaconf import OmegaConf

    from twotower_train.training.config import from_container
    from twotower_train.training.recipes import check_run, compose

    composed = compose(recipe)
    composed.output_dir = str(out)  # before resolving: checkpoint.dir interpolates it
    values = OmegaConf.to_container(composed, resolve=True)
    values.pop("hydra", None)
    # The folder gives the architecture; how it computes (router / scan dtypes, which no HF
    # config holds) is the recipe's training choice.
    numerics = {k: values["model"][k] for k in TRAINING_NUMERICS if k in values["model"]}
    values["model"] = {"preset": values["model"]["preset"], **cfg.to_dict(), **numerics}
    values["checkpoint"] = {**values.get("checkpoint", {}), "dir": str(out / CHECKPOINTS)}
    values["parallelism"] = {**values.get("parallelism", {}), **vars(parallel)}
    recorded = values.get("objective") or {}
    if recorded.get("name") == objective["name"]:  # the recipe's options, the import's choices
        objective = {**recorded, **objective}
    values["objective"] = objective  # training resumes with the same recipe: nothing differs
    return check_run(from_container(values, check_data=False)).raw


def _parallel(cfg: BackboneConfig, tp: int, ep: int) -> ParallelConfig:
    """The import layout, checked against the model and the number of processes."""
    from twotower_train.model.sizes import check_parallel_layout

    parallel = ParallelConfig(tensor_parallel=tp, sequence_parallel=tp > 1, expert_parallel=ep)
    try:
        check_parallel_layout(cfg, parallel)
    except ConfigError as error:
        message = str(error).replace("parallelism.tensor_parallel", "--tp")
        raise ConversionError(message.replace("parallelism.expert_parallel", "--ep")) from None
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world % (tp * ep):
        raise ConversionError(
            f"--tp {tp} --ep {ep} needs a multiple of {tp * ep} processes, this run has {world}: "
            f"launch it with torchrun --nproc-per-node {tp * ep} -m twotower_train.convert.cli"
        )
    return parallel


def write_trainer_checkpoint(
    out: Path,
    cfg: BackboneConfig,
    state: dict[str, torch.Tensor] | Callable[[torch.nn.Module], None],
    objective_values: dict,
    *,
    tp: int,
    ep: int,
    recipe: str,
) -> Path:
    """Write ``state`` (whole tensors, Megatron names of the objective's model; or a function
    that fills the TP=1 model in place) as a step-0 trainer checkpoint of run folder ``out``
    (``out/checkpoints``) at layout ``tp``/``ep``; ``objective_values`` is the recipe's
    ``objective`` section."""
    from twotower_train.training import checkpoint
    from twotower_train.training.config import Precision, from_container
    from twotower_train.training.objectives import build_objective
    from twotower_train.training.optimizer import build_reducer_and_optimizer, freeze_all_but

    parallel = _parallel(cfg, tp, ep)
    raw = imported_recipe(recipe, cfg, out, parallel, objective_values)
    train_cfg = from_container(raw, check_data=False)
    distributed.initialize(seed=train_cfg.training.seed)  # TP=1: the converted tensors are whole
    objective = build_objective(train_cfg.objective_name, train_cfg.objective_options)
    bf16 = train_cfg.optimizer.precision is Precision.BF16
    dtype = torch.bfloat16 if bf16 else torch.float32
    model = objective.build_model(cfg, ParallelConfig(), dtype)
    if callable(state):
        state(model)
    else:
        load_megatron_state(model, state)
    tmp = out.with_name(f".{out.name}.partial")  # the same name on every rank
    _on_rank_zero(lambda: (shutil.rmtree(tmp, ignore_errors=True), tmp.mkdir(parents=True)))
    try:
        if (tp, ep) != (1, 1):
            resharding = tmp / "tp1"
            _on_rank_zero(resharding.mkdir)
            dist_checkpointing.save({"model": objective.checkpoint_state(model)}, str(resharding))
            # Rank 0 writes the metadata last; no rank reads before it is there.
            _on_rank_zero(lambda: None)
            model = None  # the whole TP=1 model goes before the sharded one is built
            distributed.initialize(
                tensor_parallel=tp, expert_parallel=ep, seed=train_cfg.training.seed
            )
            model = objective.build_model(cfg, parallel, dtype)
            # A private TP=1 save made just above (no meta.json): read it as it was written.
            loaded = dist_checkpointing.load(
                {"model": objective.checkpoint_state(model)}, str(resharding)
            )["model"]
            objective.load_checkpoint_state(model, loaded)
            _on_rank_zero(lambda: None)  # every rank has read it before rank 0 removes it
            _on_rank_zero(lambda: shutil.rmtree(resharding))
        trainable = freeze_all_but(model, objective.trainable_parameters(model))  # as trained
        _, optimizer = build_reducer_and_optimizer(train_cfg, model, trainable)
        # A fresh optimizer has no moments before its first step: create them (zero, step 0 —
        # what that step starts from) as loading does, so the checkpoint holds what resuming
        # reads.
        optimizer.sharded_state_dict(objective.checkpoint_state(model), is_loading=True)
        checkpoint.save_checkpoint(
            tmp / CHECKPOINTS,
            objective=objective,
            model=model,
            optimizer=optimizer,
            scheduler=None,
            state=checkpoint.TrainState(),
            generator=torch.Generator(),
            config=raw,
        )
        _on_rank_zero(lambda: publish(tmp, out))
    except BaseException:
        _on_rank_zero(lambda: shutil.rmtree(tmp, ignore_errors=True))
        raise
    return out


def _on_rank_zero(action: Callable[[], Any]) -> None:
    """File-system changes happen once, on rank 0; every rank waits for them."""
    if not dist.is_initialized() or dist.get_rank() == 0:
        action()
    if dist.is_initialized():
        dist.barrier()


# ---- export -----------------------------------------------------------------------------------


def export_checkpoint(
    checkpoint_dir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    tokenizer: str | os.PathLike | None = None,
    dtype: str | None = None,
    block_size: int | None = None,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
    overwrite: bool = False,
    backbone: str | os.PathLike | None = None,
) -> Path:
    """A trainer checkpoint (root or ``iter_*`` folder, any TP/EP) → an HF folder at ``out``.

    ``tokenizer`` defaults to the recipe's ``data.tokenizer``; ``dtype`` (``float32`` /
    ``bfloat16``) to the training precision; ``block_size`` (two-tower) to the last curriculum
    phase's; ``backbone`` (stage 2) to where the checkpoint recorded its frozen backbone."""
    from twotower_train.inference.load import load_trained_model, run_tokenizer
    from twotower_train.model.two_tower import TwoTowerModel

    out = Path(out)
    if block_size is not None and block_size < 1:
        raise ConversionError(f"--block-size {block_size} must be a positive number of tokens")
    if max_shard_bytes < 1:
        raise ConversionError(f"--max-shard-size {max_shard_bytes} must be positive, e.g. 5GB")
    check_output(out, overwrite)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConversionError(
            "export-hf runs in one process (it loads a checkpoint of any TP/EP at TP=1); "
            "run it without torchrun"
        )
    if dtype is not None and dtype not in DTYPES:
        raise ConversionError(f"--dtype {dtype}; choose one of {sorted(DTYPES)}")
    distributed.initialize(seed=0)
    # Built in --dtype (default: the training precision), as Megatron holds each tensor in it:
    # a bf16 model keeps e.g. the Mamba A_log / D in fp32, and the export writes them so. On
    # the CPU, whatever the host has: the whole two-tower model never has to fit one GPU.
    model, train_cfg = load_trained_model(
        checkpoint_dir,
        backbone_checkpoint=backbone,
        backbone_option="--backbone ",
        device="cpu",
        dtype=DTYPES[dtype] if dtype else None,
    )
    cfg = train_cfg.model
    mask = train_cfg.objective_options.get("mask_token_id")
    if mask is not None:
        cfg = cfg.replace(mask_token_id=mask)
    tok = export_tokenizer(
        tokenizer or run_tokenizer(checkpoint_dir, train_cfg, option="--tokenizer"),
        cfg,
        explicit=tokenizer is not None,
    )
    # The model's own tensors (no copy), in the dtype held; the writer converts and holds one
    # shard of them at a time.
    state = {k: v.detach() for k, v in model.state_dict().items() if not k.endswith("_extra_state")}
    if isinstance(model, TwoTowerModel):
        if block_size is None:
            block_size = train_cfg.trained_block_size
        shortest = 2 if cfg.denoiser_shift else 1
        if not shortest <= block_size <= cfg.max_sequence_length:
            raise ConversionError(
                f"--block-size {block_size} must be in [{shortest}, {cfg.max_sequence_length}] "
                "(the model's max_sequence_length; a shifted denoiser needs blocks of two)"
            )
        save_twotower_folder(
            cfg,
            state,
            out,
            block_size=block_size,
            tokenizer=tok,
            max_shard_bytes=max_shard_bytes,
            overwrite=overwrite,
        )
    else:
        save_hf_folder(
            cfg, state, out, tokenizer=tok, max_shard_bytes=max_shard_bytes, overwrite=overwrite
        )
    return out


def export_tokenizer(path: str | os.PathLike, cfg: BackboneConfig, *, explicit: bool = True):
    """The tokenizer to ship with an export; its eos / mask ids must be the model's."""
    from transformers import AutoTokenizer

    from twotower_train.data.tokenizer import check_vocab

    path = Path(path)
    origin = "--tokenizer" if explicit else "the recipe's data.tokenizer"
    if not path.is_dir():
        raise ConversionError(
            f"tokenizer folder {path} ({origin}) does not exist; pass --tokenizer with the local "
            "Hugging Face tokenizer folder the model was trained with"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as error:
        reason = str(error).strip().splitlines()[0]
        raise ConversionError(f"cannot load a tokenizer from {path} ({origin}): {reason}") from None
    for role in ("eos", "mask"):
        found, expected = getattr(tokenizer, f"{role}_token_id"), getattr(cfg, f"{role}_token_id")
        if found != expected:
            raise ConversionError(
                f"tokenizer {path} has {role}_token_id={found} but the model was trained with "
                f"{role}_token_id={expected}; pass the model's own tokenizer with --tokenizer"
            )
    check_vocab(tokenizer, cfg.vocab_size)
    return tokenizer
