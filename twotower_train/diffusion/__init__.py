"""Masked block-diffusion math: corruption, attention masks, losses and metrics.

Pure tensor code: imports neither the model nor the trainer, so every piece is
CPU-testable on its own. See ``docs/diffusion.md`` for the objective and the mask picture.
"""

from twotower_train.diffusion.corruption import (
    Corruption,
    TimeSampling,
    corrupt_blocks,
    sample_block_times,
    shifted_loss_positions,
)
from twotower_train.diffusion.loss import LossOutput, LossWeighting, ar_loss, masked_diffusion_loss
from twotower_train.diffusion.masks import (
    context_valid_from_lengths,
    denoiser_block_mask,
    denoiser_mask_dense,
    denoiser_mask_mod,
)
from twotower_train.diffusion.metrics import MetricSums, diffusion_step_sums

__all__ = [
    "Corruption",
    "LossOutput",
    "LossWeighting",
    "MetricSums",
    "TimeSampling",
    "ar_loss",
    "context_valid_from_lengths",
    "corrupt_blocks",
    "denoiser_block_mask",
    "denoiser_mask_dense",
    "denoiser_mask_mod",
    "diffusion_step_sums",
    "masked_diffusion_loss",
    "sample_block_times",
    "shifted_loss_positions",
]
