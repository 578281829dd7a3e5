"""The :class:`Objective` protocol — what the trainer optimises — and its shared defaults.

The concrete objectives live next to this file (``ar.py`` stage 1, ``diffusion.py`` stage 2);
the package ``__init__`` holds the registry that picks one by recipe name
(``objective.name: ar | diffusion``).

The trainer is one loop for both stages: it asks the objective to build the model,
to name the parameters it trains, and to compute a micro-batch loss; it never branches on the
stage. An objective owns everything stage-specific:

* :meth:`Objective.build_model` — the Megatron module (stage 1: the backbone; stage 2: the
  two-tower model with a frozen context tower).
* :meth:`Objective.trainable_parameters` — the only parameters that get gradients, go to the
  optimizer and the gradient all-reduce. The trainer sets ``requires_grad=False`` on every other
  parameter, so a model may hold frozen submodules without the loop knowing.
* :meth:`Objective.loss` — ``(LossOutput, MetricSums)`` for one micro-batch. The trainer
  back-propagates ``LossOutput.numerator`` (a *sum*) and divides the gradients once by the
  global ``denominator`` (summed over micro-batches and data-parallel ranks), so the step's
  loss is exact whatever the per-micro-batch counts are (Megatron's per-token loss mode).
  Randomness (diffusion corruption) must come only from the ``generator`` argument: the trainer
  seeds it per micro-batch from ``(seed, step, offset in the global batch)``, which makes a
  resumed run bit-identical and the draws independent of the data-parallel size.
* :meth:`Objective.check` — the objective's own checks of a recipe (its options against the
  model and the curriculum), run once when a run is built from a recipe.
* :meth:`Objective.summarize` — logged ratios from the step's reduced metric sums.
* :meth:`Objective.flops_per_token` — model FLOPs per trained token (for the MFU estimate).
* :meth:`Objective.checkpoint_state` / :meth:`Objective.load_checkpoint_state` /
  :meth:`Objective.frozen_reference` — what a checkpoint stores for the model. By default the
  whole model; a two-tower objective may store only the trainable tower and return a verified
  reference (e.g. the backbone checkpoint path and a hash) for the frozen one.

:class:`ObjectiveBase` gives the defaults of the last four; an objective usually overrides only
``build_model``, ``trainable_parameters``, ``loss`` and ``summarize``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch
from megatron.core import parallel_state
from megatron.core.transformer.module import MegatronModule

from twotower_train.diffusion import LossOutput, MetricSums
from twotower_train.model.config import BackboneConfig, ParallelConfig, Recompute
from twotower_train.training.curriculum import ActivePhase, Curriculum

__all__ = [
    "Batch",
    "Objective",
    "ObjectiveBase",
    "transformer_flops_per_token",
    "vocab_parallel_argmax",
]

Batch = dict[str, torch.Tensor]
"""One micro-batch as the data loader yields it and :meth:`Objective.loss` reads it: ``tokens``,
``labels``, ``loss_mask`` (b, s)."""


@runtime_checkable
class Objective(Protocol):
    """The training objective handed to the trainer (see the module docstring)."""

    name: ClassVar[str]

    def build_model(
        self,
        model_cfg: BackboneConfig,
        parallel: ParallelConfig,
        params_dtype: torch.dtype,
        *,
        recompute: Recompute = Recompute.NONE,
        context_only: bool = False,
    ) -> MegatronModule:
        """Build the (unwrapped) model; model-parallel groups are initialised. ``recompute``
        (``training.recompute``) goes into the model's Megatron ``TransformerConfig``.
        ``context_only``: only a context tower will be filled (a context-only load for AR
        decoding) — a two-tower model builds its denoiser on the ``meta`` device."""

    def trainable_parameters(self, model: MegatronModule) -> Iterable[torch.nn.Parameter]:
        """The parameters to train; every other parameter of ``model`` is frozen."""

    def loss(
        self, model: torch.nn.Module, batch: Batch, phase: ActivePhase, generator: torch.Generator
    ) -> tuple[LossOutput, MetricSums]:
        """Loss sums of one micro-batch (``tokens``/``labels``/``loss_mask``: (b, s))."""

    def summarize(self, sums: MetricSums) -> dict[str, float]:
        """Logged metrics from the step's sums (already reduced over micro-batches and ranks)."""

    def check_model(self, model_cfg: BackboneConfig) -> None:
        """Raise :class:`ConfigError` if the options do not fit this model."""

    def check(self, model_cfg: BackboneConfig, curriculum: Curriculum) -> None:
        """Raise :class:`ConfigError` if the options do not fit this model and curriculum (run
        when a run is built from a recipe: :func:`twotower_train.training.recipes.check_run`)."""

    def check_start(self, *, resuming: bool) -> None:
        """Raise :class:`ConfigError` if the options cannot start this run (before any build)."""

    def flops_per_token(self, model_cfg: BackboneConfig, seq_length: int) -> float:
        """Model FLOPs (forward + backward) per trained token."""

    def checkpoint_state(self, model: MegatronModule) -> dict[str, Any]:
        """The model's sharded state dict as stored in a checkpoint."""

    def load_checkpoint_state(self, model: MegatronModule, state: dict[str, Any]) -> None:
        """Load what :meth:`checkpoint_state` stored (after dist_checkpointing.load)."""

    def frozen_reference(self, model: MegatronModule) -> dict[str, Any]:
        """JSON-able description of frozen weights not stored in the checkpoint ({} if none).

        Saved with every checkpoint and compared (equality) when one is loaded."""


def transformer_flops_per_token(model_cfg: BackboneConfig, seq_length: int) -> float:
    """Forward+backward FLOPs per token of one pass of the backbone over ``seq_length`` tokens.

    ``6 * active parameters`` (matmuls: 2 forward + 4 backward per weight, the usual estimate)
    plus causal self-attention scores and values: per attention layer ``6 * heads * head_dim *
    seq_length`` (the ``12·L·H·Q·T`` term of the PaLM appendix, halved for the causal mask).
    Mamba's SSD scan is left out (it is small next to the projections at Nano widths).
    """
    from twotower_train.model.sizes import count_parameters

    _, active = count_parameters(model_cfg)
    n_attention = model_cfg.pattern.count("*")
    attention = 6 * n_attention * model_cfg.num_attention_heads * model_cfg.head_dim * seq_length
    return 6.0 * active + attention


def vocab_parallel_argmax(logits: torch.Tensor) -> torch.Tensor:
    """Global argmax (b, s) of vocab-parallel logits (b, s, vocab/TP), without gathering them.

    Each tensor-parallel rank takes its local max and its index shifted by the rank's vocab
    offset; the ranks exchange those two small (b, s) tensors and keep the largest (the lowest
    rank wins ties, as a full ``argmax`` would).
    """
    local_max, local_idx = logits.detach().max(dim=-1)  # (b, s)
    world = parallel_state.get_tensor_model_parallel_world_size()
    if world == 1:
        return local_idx
    rank = parallel_state.get_tensor_model_parallel_rank()
    local_idx = local_idx + rank * logits.shape[-1]
    group = parallel_state.get_tensor_model_parallel_group()
    maxes = [torch.empty_like(local_max) for _ in range(world)]
    idxs = [torch.empty_like(local_idx) for _ in range(world)]
    torch.distributed.all_gather(maxes, local_max.contiguous(), group=group)
    torch.distributed.all_gather(idxs, local_idx.contiguous(), group=group)
    best = torch.stack(maxes).argmax(dim=0)  # (b, s), first max = lowest rank
    return torch.stack(idxs).gather(0, best.unsqueeze(0)).squeeze(0)


class ObjectiveBase:
    """Defaults for the checkpoint, FLOPs and metric hooks of :class:`Objective`."""

    name: ClassVar[str] = ""

    @dataclasses.dataclass
    class Config:
        """No options."""

    def __init__(self, config: Any | None = None) -> None:
        self.config = config if config is not None else self.Config()

    def trainable_parameters(self, model: MegatronModule) -> Iterable[torch.nn.Parameter]:
        return [p for p in model.parameters() if p.requires_grad]

    def check_model(self, model_cfg: BackboneConfig) -> None:
        return None

    def check(self, model_cfg: BackboneConfig, curriculum: Curriculum) -> None:
        self.check_model(model_cfg)

    def check_start(self, *, resuming: bool) -> None:
        return None

    def summarize(self, sums: MetricSums) -> dict[str, float]:
        return {}

    def flops_per_token(self, model_cfg: BackboneConfig, seq_length: int) -> float:
        return transformer_flops_per_token(model_cfg, seq_length)

    def checkpoint_state(self, model: MegatronModule) -> dict[str, Any]:
        return model.sharded_state_dict()

    def load_checkpoint_state(self, model: MegatronModule, state: dict[str, Any]) -> None:
        model.load_state_dict(state)

    def frozen_reference(self, model: MegatronModule) -> dict[str, Any]:
        return {}
