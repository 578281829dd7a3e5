"""Stage 1: next-token prediction with the single-tower backbone (docs/training.md)."""

from __future__ import annotations

from typing import ClassVar

import torch
from megatron.core.transformer.module import MegatronModule

from twotower_train import backends
from twotower_train.diffusion import LossOutput, MetricSums, ar_loss
from twotower_train.model.config import BackboneConfig, ParallelConfig, Recompute
from twotower_train.training.curriculum import ActivePhase
from twotower_train.training.objectives.base import Batch, ObjectiveBase, vocab_parallel_argmax


class ARObjective(ObjectiveBase):
    """Stage 1: next-token prediction with the single-tower backbone (docs/training.md).

    Per-token NLL from Megatron's ``vocab_parallel_cross_entropy`` on the vocab-parallel logits,
    reduced by :func:`twotower_train.diffusion.ar_loss` over ``loss_mask``. Metrics: token
    accuracy and the NLL. The phase's block size does not change the AR loss (the trainer still
    logs it, so a curriculum is visible in stage 1 too).
    """

    name: ClassVar[str] = "ar"

    def build_model(
        self,
        model_cfg: BackboneConfig,
        parallel: ParallelConfig,
        params_dtype: torch.dtype,
        *,
        recompute: Recompute = Recompute.NONE,
        context_only: bool = False,  # one tower: all of it is the context tower
    ) -> MegatronModule:
        from twotower_train.model.backbone import build_backbone, transformer_config

        # Megatron's hybrid stack applies the recompute settings itself.
        config = transformer_config(
            model_cfg, parallel, params_dtype=params_dtype, recompute=recompute
        )
        return build_backbone(model_cfg, config)

    def loss(
        self, model: torch.nn.Module, batch: Batch, phase: ActivePhase, generator: torch.Generator
    ) -> tuple[LossOutput, MetricSums]:
        from twotower_train.model.backbone import forward_logits

        tokens, labels = batch["tokens"], batch["labels"]  # (b, s)
        logits = forward_logits(model, tokens)  # (b, s, vocab/TP)
        token_nll = backends.vocab_parallel_cross_entropy(logits.dtype)(logits, labels)  # (b, s)
        out = ar_loss(token_nll, batch["loss_mask"])
        keep = batch["loss_mask"].to(torch.bool)
        correct = ((vocab_parallel_argmax(logits) == labels) & keep).sum()
        sums = MetricSums(
            {
                "nll_sum": float(out.numerator.detach()),
                "num_tokens": float(out.num_masked),
                "correct": float(correct),
            }
        )
        return out, sums

    def summarize(self, sums: MetricSums) -> dict[str, float]:
        v = sums.values
        n = v["num_tokens"]
        return {"accuracy": v["correct"] / n if n else float("nan")}
