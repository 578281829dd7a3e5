"""A shifted denoiser (``model.denoiser_shift``: the output at position i scores token i + 1, a
block's first position is the context tower's prediction) in the samplers, the export and
speculative decoding: the export decodes token-identically to Megatron, mock-AR runs the
denoiser as released, and speculative decoding stays AR greedy."""

from __future__ import annotations

import pytest
import torch

from tests.convert.models import parity_config
from tests.convert.two_tower_models import export, left_padded, load_export, random_two_tower
from twotower_train import distributed
from twotower_train.convert.two_tower import load_twotower_folder
from twotower_train.decoding.samplers import (
    ARConfig,
    MaskDiffusionConfig,
    MockARConfig,
    generate_ar,
    generate_mask_diffusion,
    generate_mock_ar,
)
from twotower_train.decoding.speculative import SpeculativeConfig, generate_speculative
from twotower_train.decoding.unmasking import block_logits

PROMPTS = [[5, 17, 99, 240, 31, 7], [12, 400, 9], [77]]
NEW = 16
MASK = 3


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    distributed.initialize(seed=0)
    model = random_two_tower(parity_config().replace(denoiser_shift=True), seed=4)
    folder = export(model, tmp_path_factory.mktemp("export") / "hf")
    return model, load_export(folder), folder


def test_export_carries_the_shift(pair):
    model, hf, folder = pair
    assert model.denoiser_shift and hf.denoiser_shift
    cfg, _, config = load_twotower_folder(folder)
    assert cfg.denoiser_shift and config.denoiser_shift


def test_block_logits_read_one_position_to_the_left(pair):
    """Position 0 is the context tower's last logits; position j the denoiser's output j − 1."""
    model, _, _ = pair
    tokens = torch.tensor([PROMPTS[0]])
    prefill = model.prefill(tokens, logits="last")
    block = torch.tensor([[MASK, 40, MASK, MASK, 8, MASK, MASK, MASK]])
    t = torch.tensor([0.75])
    raw = model.denoise_block(prefill.cache, block, t)
    scores = block_logits(model, prefill.cache, block, t, prefill.logits)
    assert torch.equal(scores[:, 0], prefill.logits[:, 0].to(scores))
    assert torch.equal(scores[:, 1:], raw[:, :-1])


@pytest.mark.parametrize("threshold, block_size, steps", [(0.5, 4, 4), (0.9, 8, 4), (0.8, 8, 8)])
def test_mask_diffusion_token_identical(pair, threshold, block_size, steps):
    model, hf, _ = pair
    options = dict(
        max_new_tokens=NEW,
        block_size=block_size,
        steps_per_block=steps,
        mask_token_id=MASK,
        confidence_threshold=threshold,
    )
    ours = generate_mask_diffusion(model, PROMPTS, MaskDiffusionConfig(**options))
    ids, mask = left_padded(PROMPTS)
    theirs = hf.generate_mask_diffusion(ids, **options, temperature=0.0, attention_mask=mask)
    new = theirs[:, ids.shape[1] :].tolist()
    assert all(len(t) == NEW for t in ours.tokens)  # no row stopped early: the whole row compared
    assert [row[: len(t)] for row, t in zip(new, ours.tokens)] == ours.tokens
    assert ours.denoiser_forwards > 0


def test_every_block_starts_with_the_context_towers_greedy_token(pair):
    """γ → 0 commits a whole block per forward; its first position is scored by the context
    tower alone, so it is AR's greedy token after everything before it."""
    model, _, _ = pair
    S = 4
    config = MaskDiffusionConfig(
        max_new_tokens=12,
        block_size=S,
        steps_per_block=S,
        mask_token_id=MASK,
        confidence_threshold=1e-9,
    )
    out = generate_mask_diffusion(model, PROMPTS, config)
    assert out.denoiser_forwards == 3
    for prompt, new in zip(PROMPTS, out.tokens):
        for start in range(0, len(new), S):
            logits = model.prefill(torch.tensor([prompt + new[:start]]), logits="last").logits
            assert new[start] == int(logits[0, -1].argmax())


def test_mock_ar_runs_the_denoiser_and_matches_the_export(pair):
    """Released mock-AR whatever the shift: the unmodulated denoiser on the last token."""
    model, hf, _ = pair
    mock = generate_mock_ar(model, PROMPTS, MockARConfig(max_new_tokens=NEW))
    ar = generate_ar(model, PROMPTS, ARConfig(max_new_tokens=NEW))
    assert mock.tokens != ar.tokens and mock.denoiser_forwards == NEW
    ids, mask = left_padded(PROMPTS)
    theirs = hf.generate_mock_ar(ids, max_new_tokens=NEW, attention_mask=mask)
    assert theirs[:, ids.shape[1] :].tolist() == mock.tokens


@pytest.mark.parametrize("block_size, steps", [(4, 1), (8, 2)])
def test_speculative_equals_ar(pair, block_size, steps):
    model, _, _ = pair
    ar = generate_ar(model, PROMPTS, ARConfig(max_new_tokens=NEW))
    spec = generate_speculative(
        model,
        PROMPTS,
        SpeculativeConfig(
            max_new_tokens=NEW, block_size=block_size, steps_per_block=steps, mask_token_id=MASK
        ),
    )
    assert spec.tokens == ar.tokens
