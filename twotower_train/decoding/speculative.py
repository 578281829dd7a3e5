"""Lossless self-speculative decoding: the denoiser drafts, the context tower verifies.

Each round works on one block of S positions right after the context cache:

1. position 0 holds the AR tower's token after everything accepted so far (already emitted);
   the denoiser drafts positions 1..S−1 by confidence unmasking (few steps, low γ —
   :func:`~.unmasking.unmask_block`, the mask-diffusion inner loop);
2. the context tower advances over the whole block in ONE forward with logits at every
   position and the Mamba states after every position (``advance(..., position_states=True)``);
3. per row, the longest draft prefix equal to the AR tower's greedy choices is accepted, and
   the AR token after it becomes position 0 of the next block;
4. the cache is rolled back to the accepted length (:meth:`~.interface.ContextOutput.rollback`:
   K/V trimmed, Mamba conv/SSM states at the accepted length, exact).

Every emitted token is the AR tower's greedy choice given the tokens before it, so the output
is token-identical to :func:`~.samplers.generate_ar` (up to float rounding between a one-token
and a multi-token forward, which can only matter at an exact tie between two logits). Greedy
only: with temperature > 0 the standard acceptance rule needs the draft distribution of each
token given the tokens before it, which confidence unmasking — committing positions out of
order — does not provide.

Torch-only like :mod:`.samplers` (the Hugging Face export ships this file verbatim)::

    import torch
    from twotower_train import distributed
    from twotower_train.model.config import preset
    from twotower_train.model.two_tower import TwoTowerModel
    from twotower_train.decoding.speculative import SpeculativeConfig, generate_speculative
    distributed.initialize(seed=0)
    model = TwoTowerModel.build(preset("tiny")).eval()
    out = generate_speculative(model, [[5, 6, 7], [8, 9]], SpeculativeConfig(max_new_tokens=16))
    print(out.tokens, out.accepted_per_verify, out.tokens_per_model_forward)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .batching import Generation, OnCommit, prefill_prompts
from .compiled import decoding_model
from .sampling import choose_tokens
from .unmasking import MaskDiffusionConfig, unmask_block


@dataclass
class SpeculativeConfig(MaskDiffusionConfig):
    """Mask-diffusion drafting knobs; ``block_size`` S is the verified width (the AR token
    after the accepted prefix + S − 1 drafted positions)."""

    block_size: int = 8
    steps_per_block: int = 1
    """Draft denoising steps per block at most (the floor drafts every position in them). One
    step — all S − 1 drafts from one denoiser forward — gave the most tokens per (context +
    denoiser) forward on the demo model (docs/evaluation.md)."""
    confidence_threshold: float = 0.5
    """γ of the draft steps after the first (with one step the floor commits everything)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.choice.temperature != 0:
            raise ValueError(
                "speculative decoding verifies greedily: use temperature=0 (for sampling use "
                "generate_mask_diffusion or generate_ar)"
            )


@dataclass
class SpeculativeGeneration(Generation):
    accepted: int = 0
    """Drafted tokens accepted, summed over rows (tokens from the rows still generating)."""
    verify_forwards: int = 0
    """Row verification forwards (context-tower forwards after the prefill)."""

    @property
    def accepted_per_verify(self) -> float:
        """Accepted draft tokens per verification forward of a row (0 .. S − 1)."""
        return self.accepted / self.verify_forwards if self.verify_forwards else math.nan


@torch.no_grad()
def generate_speculative(
    model,
    prompts: list[list[int]],
    config: SpeculativeConfig,
    generator: torch.Generator | None = None,
    on_commit: OnCommit | None = None,
) -> SpeculativeGeneration:
    """Greedy self-speculative decoding (module docstring); same output as ``generate_ar``."""
    model = decoding_model(model, config)
    out, stats, prefill = prefill_prompts(
        model, prompts, config, "last", on_commit, SpeculativeGeneration
    )
    batch, S = len(prompts), config.block_size
    ctx_device, den_device = model.context_device, model.denoiser_device
    cache = prefill.cache
    first, _ = choose_tokens(prefill.logits, config.choice)  # (b, 1) the AR token after the prompt
    out.extend(first.tolist())
    drafted = torch.zeros(batch, S, dtype=torch.bool, device=den_device)
    drafted[:, 0] = True  # position 0 is the AR token, fixed
    mirror = None
    while not out.finished:
        stay = out.leave(ctx_device)  # finished rows leave the batch
        if stay is not None:
            cache, first = cache.select(stay), first[stay]
        batch = len(out.live)
        block = torch.full((batch, S), config.mask_token_id, dtype=torch.long, device=den_device)
        block[:, 0] = first[:, 0].to(den_device)
        # A row can still use at most `remaining` tokens: the AR token after its accepted
        # drafts is one of them, so the drafts beyond position remaining − 1 are never used.
        needed = out.remaining(den_device).clamp(max=S)
        mirror = cache.to(den_device, like=mirror)  # towers apart: what the last round added
        block = unmask_block(
            model, mirror, block, drafted[:batch], needed, config, stats, generator
        ).to(ctx_device)
        verified = model.advance(cache, block, logits="all", position_states=True)
        stats.context_forwards += 1
        stats.row_context_forwards += batch
        stats.verify_forwards += batch
        ar, _ = choose_tokens(verified.logits, config.choice)  # (b, S) AR token after each
        agree = (block[:, 1:] == ar[:, :-1]).long()  # (b, S − 1) draft j+1 is AR's choice
        accepted = agree.cumprod(-1).sum(-1)  # (b,) longest agreeing draft prefix
        first = ar.gather(1, accepted.unsqueeze(-1))  # (b, 1) the AR token after it
        # One read per round: each row's accepted count, its next AR token and its drafts.
        host = torch.cat([accepted.unsqueeze(-1), first, block[:, 1:]], dim=1).tolist()
        gained = out.extend([row[2 : 2 + row[0]] + [row[1]] for row in host])
        # Accepted drafts that made it into the output (a row may stop inside its draft).
        stats.accepted += sum(min(row[0], n) for row, n in zip(host, gained))
        cache = verified.rollback(cache, accepted + 1)  # keep position 0 + the accepted drafts
    return stats
