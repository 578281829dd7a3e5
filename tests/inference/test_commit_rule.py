"""Mask diffusion's commit rule on a scripted denoiser (fixed logits): which positions commit
depends on the untempered p(x0|xt) only, so a temperature > 0 draws other tokens but never
commits other positions; Gumbel-max draws follow the tempered distribution."""

from __future__ import annotations

import math

import pytest
import torch

from twotower_train.decoding.cache import ContextCache
from twotower_train.decoding.interface import ContextOutput
from twotower_train.decoding.samplers import MaskDiffusionConfig, generate_mask_diffusion
from twotower_train.decoding.sampling import TokenChoice, choose_block_tokens

V, MASK, S = 16, 3, 8
TIES = [1, 2, 3, 4, 1, 2, 3, 4]
"""Position i has TIES[i] candidate tokens at logit 0; every other token sits at TAIL."""
TAIL = -3.0
GAMMA = 0.45


def scripted_logits() -> torch.Tensor:
    logits = torch.full((S, V), TAIL)
    for i, ties in enumerate(TIES):
        logits[i, 4 : 4 + ties] = 0.0
    return logits


def untempered_confidence(ties: int) -> float:
    """The probability of one of the tied tokens (the mask token is forbidden)."""
    return 1.0 / (ties + (V - 1 - ties) * math.exp(TAIL))


class ScriptedModel:
    """The samplers' model interface with a denoiser that returns the same logits always and
    records the blocks it was shown."""

    context_device = denoiser_device = torch.device("cpu")
    denoiser_shift = False

    def __init__(self):
        self.seen: list[torch.Tensor] = []

    def _context(self, cache, tokens, valid=None):
        valid = torch.ones(tokens.shape, dtype=torch.bool) if valid is None else valid
        past = cache.valid if cache.valid is not None else valid[:, :0]
        return ContextOutput(cache=ContextCache(valid=torch.cat([past, valid], 1)), logits=None)

    def prefill(self, tokens, valid=None, logits="last"):
        return self._context(ContextCache(), tokens, valid)

    def advance(self, cache, tokens, logits="last", position_states=False):
        return self._context(cache, tokens)

    def denoise_block(self, cache, block, t):
        self.seen.append(block.clone())
        return scripted_logits().expand(block.shape[0], -1, -1)


def trace(temperature: float, seed: int):
    """(tokens, the masked positions the denoiser saw at every step)."""
    model = ScriptedModel()
    config = MaskDiffusionConfig(
        max_new_tokens=2 * S,
        choice=TokenChoice(temperature=temperature),
        mask_token_id=MASK,
        block_size=S,
        steps_per_block=S,
        confidence_threshold=GAMMA,
    )
    out = generate_mask_diffusion(model, [[5, 6]], config, torch.Generator().manual_seed(seed))
    return out.tokens[0], [(block[0] == MASK).tolist() for block in model.seen]


def test_the_first_step_commits_exactly_the_positions_above_gamma():
    assert untempered_confidence(1) > GAMMA > untempered_confidence(2)
    # Under the tempered distribution (T=0.1) the two-way ties would clear γ as well.
    assert 1.0 / (2 + (V - 3) * math.exp(TAIL / 0.1)) >= GAMMA
    _, masked = trace(0.0, 0)
    assert masked[0] == [True] * S
    assert masked[1] == [ties != 1 for ties in TIES]


@pytest.mark.parametrize("temperature", [0.05, 0.1])
def test_temperature_never_changes_which_positions_commit(temperature):
    greedy_tokens, greedy_masked = trace(0.0, 0)
    drawn = set()
    for seed in range(12):
        tokens, masked = trace(temperature, seed)
        assert masked == greedy_masked
        drawn.add(tuple(tokens))
    assert any(tokens != tuple(greedy_tokens) for tokens in drawn)  # the ties were sampled


def test_gumbel_max_follows_the_tempered_distribution():
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0, 2.5]])
    generator = torch.Generator().manual_seed(0)
    draws = torch.stack(
        [
            choose_block_tokens(logits, TokenChoice(temperature=2.0), MASK, generator)[0]
            for _ in range(4000)
        ]
    ).flatten()
    expected = (logits[0] / 2.0).masked_fill(torch.arange(5) == MASK, -math.inf).softmax(-1)
    observed = torch.bincount(draws, minlength=5).float() / draws.numel()
    assert observed[MASK] == 0
    assert torch.allclose(observed, expected, atol=0.03)
    tokens, confidence = choose_block_tokens(logits, TokenChoice(temperature=2.0), MASK, generator)
    untempered = logits.masked_fill(torch.arange(5) == MASK, -math.inf).softmax(-1)
    assert confidence.item() == pytest.approx(untempered[0, tokens.item()].item())
