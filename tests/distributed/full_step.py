"""One complete stage-2 trainer step, run the same way at every parallel layout.

Shared by the full-step parity test (the TP=1/DP=1 reference, in the test process) and its
torchrun worker (``workers/train_one_step.py``, the other layouts). A step is the trainer's own
``train()`` with ``training.max_steps=1``: diffusion loss over several micro-batches, backward,
Megatron DDP + ``finalize_model_grads`` (data-parallel / expert-data-parallel sums, the
tensor-parallel sum of sequence-parallel parameters, ÷ global masked tokens, the MoE
expert-bias update), clipping and AdamW.

Every layout starts from the same weights: the backbone from one stage-1 checkpoint (saved at
TP=1, resharded on load) and the adaLN parameters (replicated on every rank) set from a fixed
generator to non-zero values, so their MLP is in the gradient path. What comes out is gathered
through ``dist_checkpointing`` (reshardable, so any layout loads at TP=1): the trainer's own
checkpoint of the updated denoiser (+ adaLN, + router expert biases), and the same sharded state
dict saved once more with every trainable parameter's data swapped for its gradient.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from megatron.core import dist_checkpointing

from tests.training.fixtures import TINY_OVERRIDES

GLOBAL_BATCH = 8
MICRO_BATCH = 1  # so that every layout (DP <= 4) accumulates over >= 2 micro-batches

MODELS = {
    "moe": [],  # tiny: M*E- (Mamba, attention, MoE with expert bias, MLP)
    # Megatron trains MoE under TP only with sequence parallelism: TP without SP runs on a
    # model without MoE layers.
    "dense": ["model.pattern=M*-"],
}

LAYOUTS: dict[str, tuple[str, int, list[str]]] = {
    # name: (model, processes, overrides)
    "tp2-sp": ("moe", 2, ["parallelism.tensor_parallel=2", "parallelism.sequence_parallel=true"]),
    "tp2": ("dense", 2, ["parallelism.tensor_parallel=2", "parallelism.sequence_parallel=false"]),
    "ep2": ("moe", 2, ["parallelism.expert_parallel=2"]),  # experts split; dense params DP=2
    "dp2": ("moe", 2, []),
    "tp2-sp-dp2": (
        "moe",
        4,
        ["parallelism.tensor_parallel=2", "parallelism.sequence_parallel=true"],
    ),
    "ep2-dp2": ("moe", 4, ["parallelism.expert_parallel=2"]),  # expert DP 2, dense DP 4
}


def step_overrides(
    model: str, data_root: Path, backbone: Path, run_dir: Path, layout: list[str]
) -> list[str]:
    """Stage 2: one step of the demo_twotower curriculum (S=32) at peak lr, then a save."""
    return [
        f"data.root={data_root}",
        f"output_dir={run_dir}",
        f"checkpoint.dir={run_dir}/ck",
        *TINY_OVERRIDES,
        *MODELS[model],
        *layout,
        f"objective.backbone_checkpoint={backbone}",
        f"training.global_batch_size={GLOBAL_BATCH}",
        f"training.micro_batch_size={MICRO_BATCH}",
        "training.max_steps=1",
        "curriculum.phases.0.lr.warmup_steps=0",
    ]


def set_adaln(module: torch.nn.Module) -> None:
    """adaLN away from its identity init, identical on every rank and layout."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _, p in sorted(module.denoiser.adaln.named_parameters()):
            p.add_(torch.randn(p.shape, generator=generator) * 0.1)


def run_step(cfg, out: Path) -> dict:
    """Train one step of ``cfg`` (collective); writes ``out/ck`` (the trainer's checkpoint),
    ``out/grads`` and, on rank 0, ``out/record.json`` (loss, grad norm)."""
    from twotower_train.training.trainer import Trainer

    trainer = Trainer(cfg)
    try:
        set_adaln(trainer.module)
        trainer.train()
        _save_grads(trainer, out / "grads")
    finally:
        trainer.close()
    record = {}
    if trainer.logger.history:  # rank 0
        record = {k: trainer.logger.history[0][k] for k in ("loss", "grad_norm")}
        (out / "record.json").write_text(json.dumps(record))
    return record


def _save_grads(trainer, directory: Path) -> None:
    """The gradients the optimizer applied (after the reduction; clipped in place on CPU),
    saved like the weights: the parameters' data is swapped for their gradients for one
    ``dist_checkpointing.save`` of the same sharded state dict."""
    params = [p for p in trainer.trainable if p.requires_grad]
    weights = [p.data for p in params]
    try:
        for p in params:
            p.data = p.main_grad
        state = trainer.objective.checkpoint_state(trainer.module)
        if torch.distributed.get_rank() == 0:
            directory.mkdir(parents=True)
        torch.distributed.barrier()
        dist_checkpointing.save(state, str(directory))
    finally:
        for p, w in zip(params, weights, strict=True):
            p.data = w


def gatherer(cfg):
    """``gather(path)``: a saved denoiser state (weights or gradients) loaded at this process's
    layout (TP=1) into one model built once, as a flat state dict of the denoiser (parameters
    and buffers such as expert biases)."""
    from twotower_train.model.config import ParallelConfig
    from twotower_train.training.objectives import build_objective

    objective = build_objective(cfg.objective_name, cfg.objective_options)
    model = objective.build_model(cfg.model, ParallelConfig(), torch.float32)

    def gather(path: Path) -> dict[str, torch.Tensor]:
        # Raw dist_checkpointing reads: the gradient folders are plain saves (no meta.json).
        state = dist_checkpointing.load({"model": objective.checkpoint_state(model)}, str(path))
        state = state["model"]
        objective.load_checkpoint_state(model, state)
        return {
            k: v.clone()
            for k, v in model.denoiser.state_dict().items()
            if isinstance(v, torch.Tensor)
        }

    return gather
