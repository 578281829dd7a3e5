"""The three generation modes of the model card (docs/inference.md), on token ids only.

* :func:`generate_mask_diffusion` — block-wise confidence unmasking with the denoiser;
* :func:`generate_mock_ar` — one masked position at a time, predicted by the denoiser;
* :func:`generate_ar` — the context tower alone, standard cached decoding.

They drive any model with the incremental interface of :mod:`.cache` (``prefill``,
``denoise_block``, ``advance``; full-vocabulary logits): the Megatron
:class:`~twotower_train.model.two_tower.TwoTowerModel` and the Hugging Face export, which ships
a verbatim copy of this module (it imports only ``torch`` and its siblings). Prompts of different lengths
are left-padded into one batch. Each returns a :class:`Generation` with the new tokens and the
statistic the card reports: tokens committed per denoiser forward.

Example (CPU, untrained tiny model — the tokens are noise, the mechanics are real)::

    import torch
    from twotower_train import distributed
    from twotower_train.model.config import preset
    from twotower_train.model.two_tower import TwoTowerModel
    from twotower_train.inference.samplers import MaskDiffusionConfig, generate_mask_diffusion
    distributed.initialize(seed=0)
    model = TwoTowerModel.build(preset("tiny")).eval()
    out = generate_mask_diffusion(model, [[5, 6, 7], [8, 9]], MaskDiffusionConfig(max_new_tokens=16))
    print(out.tokens, out.tokens_per_forward)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .sampling import TokenChoice, choose_tokens


@dataclass
class DecodeConfig:
    """What every sampler takes."""

    max_new_tokens: int = 128
    choice: TokenChoice = field(default_factory=TokenChoice)
    """Temperature / top-k / top-p; greedy by default."""
    eos_token_id: int | None = None
    pad_token_id: int = 0
    """Left padding of prompts of different lengths."""


@dataclass
class ARConfig(DecodeConfig):
    """AR decoding with the context tower alone."""


@dataclass
class MockARConfig(DecodeConfig):
    mask_token_id: int = 3


@dataclass
class MaskDiffusionConfig(MockARConfig):
    block_size: int = 16
    """Tokens generated per block (S; the released model samples at 16)."""
    steps_per_block: int = 16
    """Denoising iterations per block at most; a floor guarantees the block completes."""
    confidence_threshold: float = 0.8
    """γ: every masked position whose chosen token has at least this probability is committed."""


@dataclass
class Generation:
    tokens: list[list[int]]
    """New tokens per prompt (up to and including EOS)."""
    denoiser_forwards: int = 0
    """Batched denoiser forwards (each one runs every row)."""
    context_forwards: int = 0
    committed: int = 0
    """Tokens committed while generating (all rows, including those past a row's EOS)."""

    @property
    def tokens_per_forward(self) -> float:
        """Committed tokens per row per denoiser forward: 1.0 for mock-AR, up to S for mask
        diffusion (the card's "tokens / step")."""
        if not self.denoiser_forwards:
            return float("nan")
        return self.committed / (self.denoiser_forwards * len(self.tokens))


def left_pad(prompts: list[list[int]], pad_id: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts of different lengths → (tokens (b, P), valid (b, P)), left-padded."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    width = max(len(p) for p in prompts)
    tokens = torch.full((len(prompts), width), pad_id, dtype=torch.long, device=device)
    valid = torch.zeros(len(prompts), width, dtype=torch.bool, device=device)
    for row, prompt in enumerate(prompts):
        tokens[row, width - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
        valid[row, width - len(prompt):] = True
    return tokens, valid


class _Output:
    """Collects new tokens per row and stops a row at its first EOS."""

    def __init__(self, batch: int, max_new: int, eos: int | None):
        self.rows: list[list[int]] = [[] for _ in range(batch)]
        self.done = [False] * batch
        self.max_new, self.eos = max_new, eos

    def extend(self, new: torch.Tensor) -> None:
        for row, ids in enumerate(new.tolist()):
            for token in ids:
                if self.done[row]:
                    break
                self.rows[row].append(token)
                if token == self.eos or len(self.rows[row]) >= self.max_new:
                    self.done[row] = True

    @property
    def finished(self) -> bool:
        return all(self.done)


def _start(model, prompts: list[list[int]], config: DecodeConfig, logits: str):
    """Left-pad the prompts and prefill the context tower → (collector, stats, prefill)."""
    tokens, valid = left_pad(prompts, config.pad_token_id, model.context_device)
    out = _Output(tokens.shape[0], config.max_new_tokens, config.eos_token_id)
    stats = Generation(tokens=out.rows, context_forwards=1)
    return out, stats, model.prefill(tokens, valid=valid, logits=logits)


@torch.no_grad()
def generate_mask_diffusion(
    model, prompts: list[list[int]], config: MaskDiffusionConfig,
    generator: torch.Generator | None = None,
) -> Generation:
    """Block-wise mask diffusion with confidence unmasking (module docstring; card §"How mask
    diffusion works")."""
    if config.steps_per_block <= 0 or config.block_size <= 0:
        raise ValueError("block_size and steps_per_block must be positive")
    out, stats, prefill = _start(model, prompts, config, logits="none")
    cache, batch, S = prefill.cache, len(prompts), config.block_size
    device = model.denoiser_device
    for _ in range(math.ceil(config.max_new_tokens / S)):
        block = torch.full((batch, S), config.mask_token_id, dtype=torch.long, device=device)
        decoded = torch.zeros(batch, S, dtype=torch.bool, device=device)
        # Towers on two devices: the denoiser reads a copy of the cache on its own device.
        denoiser_cache = cache.to(device)
        for step in range(config.steps_per_block):
            masked = ~decoded
            if not masked.any():
                break
            t = masked.float().mean(-1)  # (b,) the block's masked fraction
            logits = model.denoise_block(denoiser_cache, block, t)  # (b, S, V)
            stats.denoiser_forwards += 1
            proposal, confidence = choose_tokens(
                logits, config.choice, forbid=config.mask_token_id, generator=generator
            )
            confidence = confidence.masked_fill(~masked, -1.0)  # decoded positions stay fixed
            commit = masked & (confidence >= config.confidence_threshold)
            # Floor: enough of the most confident positions to finish within the steps left.
            floor = torch.ceil(masked.sum(-1) / (config.steps_per_block - step)).long()  # (b,)
            order = confidence.argsort(dim=-1, descending=True)
            rank = torch.empty_like(order).scatter_(
                -1, order, torch.arange(S, device=order.device).expand_as(order)
            )
            commit |= masked & (rank < floor.unsqueeze(-1))
            block = torch.where(commit, proposal, block)
            decoded |= commit
            stats.committed += int(commit.sum())
        out.extend(block)
        if out.finished:
            break
        cache = model.advance(cache, block.to(model.context_device), logits="none").cache
        stats.context_forwards += 1
    return stats


@torch.no_grad()
def generate_mock_ar(
    model, prompts: list[list[int]], config: MockARConfig,
    generator: torch.Generator | None = None,
) -> Generation:
    """Two-tower AR: the context tower builds the cache, the denoiser predicts one masked
    position at a time (t = 1)."""
    out, stats, prefill = _start(model, prompts, config, logits="none")
    cache, batch, device = prefill.cache, len(prompts), model.denoiser_device
    masked = torch.full((batch, 1), config.mask_token_id, dtype=torch.long, device=device)
    t = torch.ones(batch, device=device)
    for _ in range(config.max_new_tokens):
        logits = model.denoise_block(cache.to(device), masked, t)  # (b, 1, V)
        stats.denoiser_forwards += 1
        new, _ = choose_tokens(logits, config.choice, forbid=config.mask_token_id, generator=generator)
        stats.committed += batch
        out.extend(new)
        if out.finished:
            break
        cache = model.advance(cache, new.to(model.context_device), logits="none").cache
        stats.context_forwards += 1
    return stats


@torch.no_grad()
def generate_ar(
    model, prompts: list[list[int]], config: ARConfig, generator: torch.Generator | None = None
) -> Generation:
    """Standard cached AR decoding with the context tower only."""
    out, stats, step = _start(model, prompts, config, logits="last")
    for _ in range(config.max_new_tokens):
        new, _ = choose_tokens(step.logits, config.choice, generator=generator)
        out.extend(new)
        if out.finished:
            break
        step = model.advance(step.cache, new, logits="last")
        stats.context_forwards += 1
    return stats
