"""Block-wise masked-diffusion corruption (docs/diffusion.md §1).

A clean sequence of ``L`` tokens is cut into ``n_blocks = L // S`` blocks of ``S`` positions.
Each block ``b`` draws a masking probability ``t_b`` in ``[eps, 1)`` and every position of the
block is independently replaced by ``mask_id`` with probability ``t_b`` (the absorbing-state
forward process of masked diffusion LMs, applied per block as in block diffusion).

The denoiser is conditioned on the *realised* masked fraction of its block (``t_realised``),
because that is the only time the sampler knows at inference: it feeds "masked positions / S"
of the block being decoded (docs/inference.md). ``t_sampled`` is kept for the optional ELBO weighting
and for logging.

Time sampling (``N = batch * n_blocks`` draws, ``u ~ U(0, 1)`` i.i.d., ``a = 1 - eps``):

* ``UNIFORM``:    ``t = eps + a * u`` for each draw independently.
* ``STRATIFIED``: ``[eps, 1)`` is cut into ``N`` equal strata; draw ``k`` is
  ``eps + a * (k + u_k) / N`` (one draw per stratum), then the ``N`` draws are randomly
  permuted before being laid out as ``(batch, n_blocks)`` so that no block position or batch
  row is tied to a stratum. Lowers the variance of the batch loss over ``t``.
* ``ANTITHETIC``: ``ceil(N / 2)`` uniform draws ``t_i = eps + a * u_i``, each followed by its
  mirror ``1 + eps - t_i`` (also in ``[eps, 1]``); the sequence ``t_0, 1+eps-t_0, t_1, ...`` is
  truncated to ``N`` and laid out row-major over ``(batch, n_blocks)``. So flat draws ``2i`` and
  ``2i + 1`` are a pair summing to ``1 + eps``; with ``N`` odd the last draw is unpaired. No
  shuffle, so the pairing is visible (and testable) in the output.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import torch

__all__ = [
    "Corruption",
    "TimeSampling",
    "corrupt_blocks",
    "sample_block_times",
    "shifted_loss_positions",
]


class TimeSampling(enum.Enum):
    """How the per-block masking probabilities ``t_b`` are drawn (see module docstring)."""

    UNIFORM = "uniform"
    STRATIFIED = "stratified"
    ANTITHETIC = "antithetic"


@dataclass(frozen=True)
class Corruption:
    """Result of :func:`corrupt_blocks`.

    Attributes:
        noisy: (b, L) long — input tokens with masked positions replaced by ``mask_id``.
        masked: (b, L) bool — True where the token was replaced (the loss positions).
        t_sampled: (b, n_blocks) float32 — masking probability drawn for each block.
        t_realised: (b, n_blocks) float32 — masked positions of the block / block size; the
            denoiser's time input (what the sampler feeds at inference).
    """

    noisy: torch.Tensor
    masked: torch.Tensor
    t_sampled: torch.Tensor
    t_realised: torch.Tensor


def sample_block_times(
    batch: int,
    n_blocks: int,
    *,
    eps: float = 1e-3,
    sampling: TimeSampling = TimeSampling.UNIFORM,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Draw per-block masking probabilities, shape (batch, n_blocks), float32, in [eps, 1]."""
    if not 0.0 < eps < 1.0:
        raise ValueError(f"eps must be in (0, 1), got {eps}")
    if not isinstance(sampling, TimeSampling):
        raise TypeError(f"sampling must be a TimeSampling, got {sampling!r}")
    n = batch * n_blocks
    span = 1.0 - eps
    kwargs = dict(generator=generator, device=device, dtype=torch.float32)
    if sampling is TimeSampling.UNIFORM:
        flat = eps + span * torch.rand(n, **kwargs)
    elif sampling is TimeSampling.STRATIFIED:
        strata = torch.arange(n, device=device, dtype=torch.float32)
        flat = eps + span * (strata + torch.rand(n, **kwargs)) / n
        flat = flat[torch.randperm(n, generator=generator, device=device)]
    else:  # ANTITHETIC
        half = eps + span * torch.rand((n + 1) // 2, **kwargs)
        pairs = torch.stack([half, (1.0 + eps) - half], dim=1)  # (ceil(n/2), 2)
        flat = pairs.reshape(-1)[:n]
    return flat.view(batch, n_blocks)


def corrupt_blocks(
    tokens: torch.Tensor,
    block_size: int,
    mask_id: int,
    *,
    eps: float = 1e-3,
    sampling: TimeSampling = TimeSampling.UNIFORM,
    generator: torch.Generator | None = None,
    maskable: torch.Tensor | None = None,
) -> Corruption:
    """Mask each block of ``tokens`` with its own probability ``t_b``.

    Args:
        tokens: (b, L) integer token ids; must not already contain ``mask_id`` (checked: one
            device sync, cheap next to a forward pass).
        block_size: S; must divide L.
        mask_id: id written at masked positions (the tokenizer's ``[MASK]``).
        eps: lower bound of ``t_b`` (keeps the ELBO weight ``1/t`` finite).
        sampling: how ``t_b`` is drawn across the batch (module docstring).
        generator: RNG for reproducibility; must live on ``tokens.device``.
        maskable: optional (b, L) bool; positions that are False are never masked (prompt or
            padding tokens). ``t_realised`` still divides by S, matching the sampler.
    """
    if tokens.dim() != 2:
        raise ValueError(f"tokens must be (batch, seq_len), got shape {tuple(tokens.shape)}")
    if tokens.dtype.is_floating_point or tokens.dtype == torch.bool:
        raise TypeError(f"tokens must be an integer tensor, got {tokens.dtype}")
    if block_size <= 0:
        raise ValueError(f"block_size must be positive, got {block_size}")
    batch, seq_len = tokens.shape
    if seq_len % block_size != 0:
        raise ValueError(
            f"block_size={block_size} must divide the sequence length {seq_len} "
            f"(choose a block size that divides seq_length)"
        )
    if not isinstance(mask_id, int) or isinstance(mask_id, bool) or mask_id < 0:
        raise ValueError(f"mask_id must be a non-negative int, got {mask_id!r}")
    if bool((tokens == mask_id).any()):
        raise ValueError(
            f"tokens already contain mask_id={mask_id}; the mask token must not occur in data"
        )
    if maskable is not None and maskable.shape != tokens.shape:
        raise ValueError(
            f"maskable must have the shape of tokens {tuple(tokens.shape)}, "
            f"got {tuple(maskable.shape)}"
        )

    n_blocks = seq_len // block_size
    t_sampled = sample_block_times(
        batch, n_blocks, eps=eps, sampling=sampling, generator=generator, device=tokens.device
    )  # (b, n_blocks)
    t_per_pos = t_sampled.repeat_interleave(block_size, dim=1)  # (b, L)
    u = torch.rand((batch, seq_len), generator=generator, device=tokens.device, dtype=torch.float32)
    masked = u < t_per_pos  # (b, L)
    if maskable is not None:
        masked = masked & maskable.to(torch.bool)
    noisy = torch.where(masked, torch.full_like(tokens, mask_id), tokens)
    t_realised = masked.view(batch, n_blocks, block_size).float().mean(dim=-1)  # (b, n_blocks)
    return Corruption(noisy=noisy, masked=masked, t_sampled=t_sampled, t_realised=t_realised)


def shifted_loss_positions(
    masked: torch.Tensor, block_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """For a denoiser whose output at position i scores the token at i + 1
    (``model.denoiser_shift``): ``(scored, heads)``, both (b, L) bool.

    ``scored`` are the masked positions the denoiser is scored on: every masked position but
    a block's first, which the frozen context tower predicts (it carries no gradient).
    ``heads`` are the positions whose outputs score them, one to the left; in row-major order
    the k-th head scores the k-th scored position.
    """
    if block_size < 2:
        raise ValueError(
            f"block_size={block_size}: a shifted denoiser needs blocks of at least 2 positions"
        )
    scored = masked.clone()
    scored[:, ::block_size] = False
    heads = torch.zeros_like(scored)
    heads[:, :-1] = scored[:, 1:]
    return scored, heads
