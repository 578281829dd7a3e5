"""Megatron ``TwoTowerModel`` vs its Hugging Face export: the same functions, fp32.

Tolerance: |Δlogit| ≤ 1e-4 (``LOGIT_ATOL``) on logits of O(1), as for the backbone: the two
implementations reduce in different orders (chunked SSD scans with other chunk boundaries,
attention, expert accumulation); measured differences are ~1e-6, while any wiring error (a state
from the wrong position, a leaked key, a tensor of the wrong tower) moves logits by ≥ 1e-2.
"""

from __future__ import annotations

import pytest
import torch

from tests.convert.models import LOGIT_ATOL
from tests.convert.two_tower_models import (
    BLOCK_SIZE,
    export,
    export_module,
    load_export,
    random_two_tower,
)
from twotower_train import distributed
from twotower_train.model.backbone import forward_logits


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    distributed.initialize(seed=0)
    model = random_two_tower()
    folder = export(model, tmp_path_factory.mktemp("export") / "hf")
    return model, load_export(folder)


def _tokens(shape, seed):
    return torch.randint(4, 4096, shape, generator=torch.Generator().manual_seed(seed))


def _close(got, expected):
    assert expected.std() > 0.5  # logits of O(1): the absolute tolerance is meaningful
    torch.testing.assert_close(got, expected, rtol=0, atol=LOGIT_ATOL)


def test_context_tower_logits(pair):
    model, hf = pair
    tokens = _tokens((2, 37), seed=0)  # 37: not a multiple of the Mamba chunk (16)
    expected = forward_logits(model.backbone, tokens)
    _close(hf.prefill(tokens, logits="all").logits, expected)
    with torch.no_grad():
        _close(hf(input_ids=tokens).logits, expected)  # forward(): pipelines, log-likelihoods


def test_left_padded_prefill_and_advance(pair):
    model, hf = pair
    tokens, new = _tokens((2, 11), seed=1), _tokens((2, 5), seed=2)
    valid = torch.ones(2, 11, dtype=torch.bool)
    valid[1, :6] = False  # row 1: a 5-token prompt left-padded to 11
    ours, theirs = model.prefill(tokens, valid, "all"), hf.prefill(tokens, valid, "all")
    _close(theirs.logits[valid], ours.logits[valid])
    _close(
        hf.advance(theirs.cache, new, "all").logits, model.advance(ours.cache, new, "all").logits
    )


def test_denoiser_block_after_a_prompt(pair):
    """A random noisy block after random left-padded prompts, then the next block after the
    context tower advanced over the first (the sampler's path)."""
    model, hf = pair
    prompt, block = _tokens((2, 13), seed=3), _tokens((2, BLOCK_SIZE), seed=4)
    block[:, ::3] = model.cfg.mask_token_id
    valid = torch.ones(2, 13, dtype=torch.bool)
    valid[0, :4] = False
    t = torch.tensor([0.4, 0.9])
    ours, theirs = (
        model.prefill(prompt, valid, "none").cache,
        hf.prefill(prompt, valid, "none").cache,
    )
    _close(hf.denoise_block(theirs, block, t), model.denoise_block(ours, block, t))
    ours = model.advance(ours, block, "none").cache
    theirs = hf.advance(theirs, block, "none").cache
    _close(hf.denoise_block(theirs, block, 1 - t), model.denoise_block(ours, block, 1 - t))
    # Unmodulated (t=None, the released mock-AR's denoiser) agrees too, and differs from timed.
    plain = model.denoise_block(ours, block, None)
    _close(hf.denoise_block(theirs, block, None), plain)
    assert (plain - model.denoise_block(ours, block, t)).abs().max() > 1e-3


def test_denoiser_every_block_of_a_sequence(pair):
    """Megatron's vectorised training forward (all blocks at once) vs the export decoding each
    block after a prefill of the clean tokens before it (an empty cache for block 0)."""
    model, hf = pair
    blocks = 4
    clean = _tokens((2, blocks * BLOCK_SIZE), seed=5)
    noisy = clean.clone()
    noisy[torch.rand(clean.shape, generator=torch.Generator().manual_seed(6)) < 0.5] = 3
    t_block = torch.rand(2, blocks, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        expected = model(clean, noisy, t_block, BLOCK_SIZE)  # (b, L, V)
    cache_cls = export_module(hf, "cache").ContextCache
    for b in range(blocks):
        p, end = b * BLOCK_SIZE, (b + 1) * BLOCK_SIZE
        cache = hf.prefill(clean[:, :p], logits="none").cache if p else cache_cls()
        _close(hf.denoise_block(cache, noisy[:, p:end], t_block[:, b]), expected[:, p:end])


def test_mock_ar_logits(pair):
    model, hf = pair
    prompt = _tokens((3, 9), seed=8)
    masked = torch.full((3, 1), model.cfg.mask_token_id)
    t = torch.ones(3)
    ours, theirs = model.prefill(prompt, logits="none"), hf.prefill(prompt, logits="none")
    _close(hf.denoise_block(theirs.cache, masked, t), model.denoise_block(ours.cache, masked, t))


def test_denoiser_at_init_with_causal_blocks_is_the_context_tower(tmp_path, single_process):
    """I1 on the export alone: adaLN at its identity init + a causal in-block mask ⇒ the denoiser computes
    the context tower (both towers the same weights), which checks its K/V and Mamba seeding."""
    model = random_two_tower()
    model.denoiser.backbone.load_state_dict(model.context_tower.backbone.state_dict())
    with torch.no_grad():
        model.denoiser.adaln.reset_modulation()
    hf = load_export(export(model, tmp_path / "hf"))
    prompt, block = _tokens((2, 10), seed=9), _tokens((2, BLOCK_SIZE), seed=10)
    expected = hf.prefill(torch.cat([prompt, block], 1), logits="all").logits[:, 10:]
    cache = hf.prefill(prompt, logits="none").cache
    t = torch.rand(2)
    _close(hf.denoise_block(cache, block, t, causal_in_block=True), expected)
    assert (hf.denoise_block(cache, block, t) - expected).abs().max() > 1e-3  # non-vacuous


def test_position_states_roll_back_exactly(pair):
    """advance(..., position_states=True): the Mamba states after new position k are the final
    states of advancing over the first k + 1 tokens only. fp32; the layers' inputs differ in the
    last bits (scans over other lengths) and the SSM states come from a per-step recurrence vs
    the chunked scan: ~1e-7, against state changes of O(0.1) per position."""
    _, hf = pair
    prompt, new = _tokens((2, 7), seed=11), _tokens((2, 6), seed=12)
    cache = hf.prefill(prompt, logits="none").cache
    full = hf.advance(cache, new, logits="none", position_states=True)
    layers = sorted(full.position_states)
    assert layers == sorted(full.cache.mamba) and layers  # every Mamba layer
    for k in range(new.shape[1]):
        partial = hf.advance(cache, new[:, : k + 1], logits="none").cache
        for i in layers:
            states = full.position_states[i]
            assert states.conv.shape[:2] == states.ssm.shape[:2] == (2, new.shape[1])
            torch.testing.assert_close(states.conv[:, k], partial.mamba[i].conv, rtol=0, atol=1e-5)
            torch.testing.assert_close(states.ssm[:, k], partial.mamba[i].ssm, rtol=0, atol=1e-5)
    # Non-vacuous: consecutive positions' states differ far beyond the tolerance.
    assert full.position_states[layers[0]].ssm.diff(dim=1).abs().amax() > 1e-2
    plain = hf.advance(cache, new, logits="all")
    with_states = hf.advance(cache, new, logits="all", position_states=True)
    assert torch.equal(plain.logits, with_states.logits)
