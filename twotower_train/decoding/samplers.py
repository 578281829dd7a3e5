"""The three generation modes of the model card (docs/inference.md), on token ids only.

* :func:`generate_mask_diffusion` — block-wise confidence unmasking with the denoiser;
* :func:`generate_mock_ar` — one next token at a time: the unmodulated denoiser on the last
  committed token, with the context cache one position short (the released semantics);
* :func:`generate_ar` — the context tower alone, standard cached decoding.

The semantics are the released remote code's (DESIGN.md §5; docs/inference.md): for a batch of
one, greedy outputs are token-identical to it on the same weights. Two differences on purpose:
a batch's rows each get their own diffusion time t (the released code uses the batch mean —
identical at batch 1), and a row ends at its first EOS or at ``max_new_tokens`` (any count, not
only whole blocks) — its tokens after EOS are dropped, where the released code returns the rest
of the block and of the batch's blocks.

(:mod:`.speculative` adds self-speculative decoding on the same pieces.) They drive any model
with the incremental interface of :mod:`.cache` (``prefill``, ``denoise_block``, ``advance``;
full-vocabulary logits): the Megatron :class:`~twotower_train.model.two_tower.TwoTowerModel` and
the Hugging Face export, which ships a verbatim copy of this module (it imports only ``torch``
and its siblings). Prompts of different lengths are left-padded into one batch. Each returns a
:class:`Generation` with the new tokens and what they cost (tokens per denoiser forward is the
card's figure). An ``on_commit`` callback sees every committed block as it lands (streaming; it
can also end a row, e.g. at a stop sequence); mask diffusion's ``step_callback`` sees every
denoising step (:data:`StepCallback`, the released hook).

Example (CPU, untrained tiny model — the tokens are noise, the mechanics are real)::

    import torch
    from twotower_train import distributed
    from twotower_train.model.config import preset
    from twotower_train.model.two_tower import TwoTowerModel
    from twotower_train.decoding.samplers import MaskDiffusionConfig, generate_mask_diffusion
    distributed.initialize(seed=0)
    model = TwoTowerModel.build(preset("tiny")).eval()
    config = MaskDiffusionConfig(max_new_tokens=16)
    out = generate_mask_diffusion(model, [[5, 6, 7], [8, 9]], config)
    print(out.tokens, out.tokens_per_forward)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .batching import (
    Collector,
    DecodeConfig,
    Generation,
    OnCommit,
    left_pad,
    prefill_prompts,
    static_caches,
)
from .cache import ContextCache
from .compiled import decoding_model
from .sampling import choose_tokens
from .unmasking import MaskDiffusionConfig, StepCallback, shifted, unmask_block


@dataclass
class ARConfig(DecodeConfig):
    """AR decoding with the context tower alone."""


@dataclass
class MockARConfig(DecodeConfig):
    """Mock-AR: the unmodulated denoiser predicts each next token (no [MASK] involved)."""


@torch.no_grad()
def generate_mask_diffusion(
    model,
    prompts: list[list[int]],
    config: MaskDiffusionConfig,
    generator: torch.Generator | None = None,
    on_commit: OnCommit | None = None,
    step_callback: StepCallback | None = None,
) -> Generation:
    """Block-wise mask diffusion with confidence unmasking (module docstring; card §"How mask
    diffusion works"; :func:`unmask_block`)."""
    model = decoding_model(model, config)
    # A shifted denoiser scores each block's first position with the context tower's last logits.
    context_logits = "last" if shifted(model) else "none"
    out, stats, prefill = prefill_prompts(model, prompts, config, context_logits, on_commit)
    cache, first, S = prefill.cache, prefill.logits, config.block_size
    device = model.denoiser_device
    block_idx, mirror = 0, None
    while not out.finished:
        batch = len(out.live)
        block = torch.full((batch, S), config.mask_token_id, dtype=torch.long, device=device)
        decoded = torch.zeros(batch, S, dtype=torch.bool, device=device)
        if step_callback is not None:
            step_callback(0, config.steps_per_block, block, t=1.0, logits=None, block_idx=block_idx)
        # Towers on two devices: the denoiser reads a copy of the cache on its own device,
        # refreshed with the positions the last block added.
        mirror = cache.to(device, like=mirror)
        block = unmask_block(
            model,
            mirror,
            block,
            decoded,
            out.remaining(device).clamp(max=S),
            config,
            stats,
            generator,
            None if first is None else first.to(device),
            step_callback,
            block_idx,
        )
        block_idx += 1
        gained = out.extend(block.tolist())
        if shifted(model):  # position 0 was the context tower's choice, in every row it reached
            stats.context_tokens += sum(n > 0 for n in gained)
        if out.finished:
            break
        block = block.to(model.context_device)
        stay = out.leave(model.context_device)
        if stay is not None:
            cache, block = cache.select(stay), block[stay]
        stats.row_context_forwards += out.active
        step = model.advance(cache, block, logits=context_logits)
        cache, first = step.cache, step.logits
        stats.context_forwards += 1
    return stats


def one_short(before: ContextCache, after: ContextCache) -> ContextCache:
    """The cache one position short of ``after`` (= ``before`` advanced by one token): its K/V
    minus the last position (views) and ``before``'s Mamba states — mock-AR's denoiser cache."""
    if after.static:  # the same buffers, ending one position earlier
        return after._like(
            lambda t: t, mamba=before.mamba, end=after.end - 1, _length=after.length - 1
        )
    return ContextCache(
        keys={i: k[:, :, :-1] for i, k in after.keys.items()},
        values={i: v[:, :, :-1] for i, v in after.values.items()},
        mamba=before.mamba,
        valid=after.valid[:, :-1],
    )


@torch.no_grad()
def generate_mock_ar(
    model,
    prompts: list[list[int]],
    config: MockARConfig,
    generator: torch.Generator | None = None,
    on_commit: OnCommit | None = None,
) -> Generation:
    """Two-tower AR as released: token p is predicted by the denoiser, unmodulated (``t=None``),
    run on the last committed token p − 1 with the context cache of the positions before it
    (attention K/V of positions < p − 1, Mamba conv/SSM states before p − 1). The context tower
    advances one token at a time; its prefill runs in two passes (all prompt tokens but the
    last, then the last) to keep the states before the last token."""
    model = decoding_model(model, config)
    tokens, valid = left_pad(prompts, config.pad_token_id, model.context_device)
    out = Collector(tokens.shape[0], config.max_new_tokens, config.eos_token_id, on_commit)
    stats = Generation(tokens=out.rows, context_forwards=2, row_context_forwards=2 * len(prompts))
    if tokens.shape[1] == 1:  # one-token prompts: an empty prefix, as one padding column
        tokens = torch.cat([torch.full_like(tokens, config.pad_token_id), tokens], dim=1)
        valid = torch.cat([torch.zeros_like(valid), valid], dim=1)
    short = model.prefill(tokens[:, :-1], valid=valid[:, :-1], logits="none").cache
    last = tokens[:, -1:]  # (b, 1) the last committed token
    if static_caches(model):  # `short` and the full cache share buffers, the block has scratch
        short = short.reserve(config.max_new_tokens + 1, static=True, scratch=1)
        cache = model.advance(short, last, logits="none").cache
    else:
        # Room in the full cache only: `short` caches never own buffers, so the denoiser's
        # block K/V (ContextCache.block_kv) never land on the full cache's last position.
        cache = model.advance(short, last, logits="none").cache.reserve(config.max_new_tokens)
    device, mirror = model.denoiser_device, None
    while not out.finished:
        mirror = short.to(device, like=mirror)  # towers apart: one new position per step
        logits = model.denoise_block(mirror, last.to(device), None)  # (b, 1, V)
        stats.denoiser_forwards += 1
        stats.row_denoiser_forwards += out.active
        new, _ = choose_tokens(logits, config.choice, generator=generator)
        out.extend(new.tolist())
        if out.finished:
            break
        last = new.to(model.context_device)
        stay = out.leave(model.context_device)
        if stay is not None:
            cache, last = cache.select(stay), last[stay]
        stats.row_context_forwards += out.active
        advanced = model.advance(cache, last, logits="none").cache
        short, cache = one_short(cache, advanced), advanced
        stats.context_forwards += 1
    return stats


@torch.no_grad()
def generate_ar(
    model,
    prompts: list[list[int]],
    config: ARConfig,
    generator: torch.Generator | None = None,
    on_commit: OnCommit | None = None,
) -> Generation:
    """Standard cached AR decoding with the context tower only."""
    model = decoding_model(model, config)
    out, stats, step = prefill_prompts(model, prompts, config, "last", on_commit)
    while True:
        new, _ = choose_tokens(step.logits, config.choice, generator=generator)
        out.extend(new.tolist())
        if out.finished:
            break
        cache, stay = step.cache, out.leave(new.device)
        if stay is not None:
            cache, new = cache.select(stay), new[stay]
        stats.row_context_forwards += out.active
        step = model.advance(cache, new, logits="last")
        stats.context_forwards += 1
    return stats
