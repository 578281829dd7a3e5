"""Weighting and reduction of per-token NLL into the training losses (docs/diffusion.md §1).

Per-token negative log-likelihoods are computed outside this module (the trainer uses
Megatron's vocab-parallel cross entropy); here they are only weighted and reduced.

Every loss is returned as ``numerator / denominator`` together with the two parts, so a trainer
can sum both over micro-batches and data-parallel ranks and divide once (exact reduction, no
mean-of-means bias).

* ``LossWeighting.MEAN`` — mean NLL over masked positions,
  ``sum_{masked} nll / #masked``. This is the objective of the released Nemotron-TwoTower model.
* ``LossWeighting.ELBO`` — the masked-diffusion evidence lower bound with weight ``1/t``,
  ``sum_{masked} nll / t / #tokens`` where ``#tokens = b * L`` (all positions, masked or not).
  Normalising by the *fixed* token count (rather than by the masked count) keeps the estimator
  an unbiased per-token bound on the sequence NLL: the ELBO is an expectation over ``t`` of a
  per-sequence sum, so its denominator must not depend on the random mask. It is then directly
  comparable to an AR next-token loss in nats/token. Pass ``t_sampled`` (the masking probability)
  for the textbook estimator; ``t_realised`` is accepted too and is never below ``1/S`` at a
  masked position.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import torch

__all__ = ["LossOutput", "LossWeighting", "ar_loss", "masked_diffusion_loss"]


class LossWeighting(enum.Enum):
    """How masked-position NLLs are weighted (module docstring)."""

    MEAN = "mean"
    ELBO = "elbo"


@dataclass(frozen=True)
class LossOutput:
    """A reduced loss and the sums it was computed from.

    Attributes:
        loss: scalar, ``numerator / max(denominator, 1)``; differentiable.
        numerator: scalar, the weighted NLL sum (differentiable).
        denominator: scalar float, the normaliser (masked count, loss-mask count or token count).
        num_masked: scalar int64, positions that carry loss (masked positions for diffusion,
            ``loss_mask`` positions for AR).
    """

    loss: torch.Tensor
    numerator: torch.Tensor
    denominator: torch.Tensor
    num_masked: torch.Tensor


def _per_position_times(t: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Broadcast per-block times (b, n_blocks) to per-position (b, L); pass (b, L) through."""
    batch, seq_len = shape
    if t.dim() != 2 or t.shape[0] != batch:
        raise ValueError(f"t must be (b, L) or (b, n_blocks) with b={batch}, got {tuple(t.shape)}")
    if t.shape[1] == seq_len:
        return t
    if t.shape[1] == 0 or seq_len % t.shape[1] != 0:
        raise ValueError(f"t has {t.shape[1]} blocks, which does not divide seq_len={seq_len}")
    return t.repeat_interleave(seq_len // t.shape[1], dim=1)  # (b, L)


def _reduce(numerator: torch.Tensor, denominator: torch.Tensor, count: torch.Tensor) -> LossOutput:
    loss = numerator / denominator.clamp(min=1.0)
    return LossOutput(loss=loss, numerator=numerator, denominator=denominator, num_masked=count)


def masked_diffusion_loss(
    token_nll: torch.Tensor,
    masked: torch.Tensor,
    t: torch.Tensor | None = None,
    *,
    weighting: LossWeighting = LossWeighting.MEAN,
) -> LossOutput:
    """Reduce per-token NLL over masked positions.

    Args:
        token_nll: (b, L) float, NLL of the clean token at every position.
        masked: (b, L) bool, True where the input was masked (loss positions).
        t: (b, L) or (b, n_blocks) per-block times; required for ``ELBO``, ignored for ``MEAN``.
        weighting: ``MEAN`` or ``ELBO`` (module docstring).

    Unmasked positions are selected out with ``torch.where`` so they get exactly zero gradient
    even if their NLL (or 1/t) is not finite.
    """
    if token_nll.shape != masked.shape or token_nll.dim() != 2:
        raise ValueError(
            f"token_nll {tuple(token_nll.shape)} and masked {tuple(masked.shape)} "
            "must both be (b, L)"
        )
    masked = masked.to(torch.bool)
    count = masked.sum()
    zero = torch.zeros((), dtype=token_nll.dtype, device=token_nll.device)
    if weighting is LossWeighting.MEAN:
        numerator = torch.where(masked, token_nll, zero).sum()
        return _reduce(numerator, count.to(token_nll.dtype), count)
    if weighting is LossWeighting.ELBO:
        if t is None:
            raise ValueError("weighting=ELBO needs the per-block times t")
        t_pos = _per_position_times(t, token_nll.shape).to(token_nll.dtype)  # (b, L)
        safe_t = torch.where(masked, t_pos, torch.ones_like(t_pos))  # no 1/0 off the mask
        numerator = torch.where(masked, token_nll / safe_t, zero).sum()
        denominator = torch.tensor(float(token_nll.numel()), device=token_nll.device)
        return _reduce(numerator, denominator.to(token_nll.dtype), count)
    raise TypeError(f"weighting must be a LossWeighting, got {weighting!r}")


def ar_loss(token_nll: torch.Tensor, loss_mask: torch.Tensor) -> LossOutput:
    """Stage-1 next-token loss: mean of ``token_nll`` (b, L) over ``loss_mask`` (b, L) != 0."""
    if token_nll.shape != loss_mask.shape:
        raise ValueError(
            f"token_nll {tuple(token_nll.shape)} and loss_mask {tuple(loss_mask.shape)} differ"
        )
    keep = loss_mask.to(torch.bool)
    count = keep.sum()
    zero = torch.zeros((), dtype=token_nll.dtype, device=token_nll.device)
    numerator = torch.where(keep, token_nll, zero).sum()
    return _reduce(numerator, count.to(token_nll.dtype), count)
