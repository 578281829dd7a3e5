"""TwoTowerModel invariants (docs/architecture.md, I1–I3) and freezing, on the tiny fp32 CPU model.

Tolerances: fp32 throughout. Paths that compute the same function with sums in a different
order (chunked vs per-block scans, SDPA with different key sets) agree to ~1e-7 on logits of
magnitude ~1; 1e-5 leaves two orders of margin while any wiring error (a wrong state, a leaked
key) moves logits by ≥1e-2.
"""

from __future__ import annotations

import pytest
import torch

from twotower_train.backends import forced_backend
from twotower_train.model.backbone import forward_logits
from twotower_train.model.two_tower import TwoTowerModel
from twotower_train.ops.block_attention import AttentionBackend

ATOL = 1e-5
LENGTH = 32


@pytest.fixture
def model(single_process, tiny_cfg):
    assert tiny_cfg.mamba_chunk_size == 16  # block sizes below differ from the chunk size
    return TwoTowerModel.build(tiny_cfg)


@pytest.fixture
def tokens(tiny_cfg):
    return torch.randint(
        4, tiny_cfg.vocab_size, (2, LENGTH), generator=torch.Generator().manual_seed(0)
    )


def randomise_adaln(model: TwoTowerModel, seed: int = 5) -> None:
    """Move adaLN away from its identity init (gate rows stay near 1)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.denoiser.adaln.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.1)


def noisy_version(tokens, mask_id, every=3):
    noisy = tokens.clone()
    noisy[:, ::every] = mask_id
    return noisy


def test_context_tower_equals_backbone(model, tokens):
    reference = forward_logits(model.backbone, tokens)
    out = model.context_tower(tokens, state_stride=8)
    torch.testing.assert_close(out.logits, reference, rtol=0, atol=ATOL)


@pytest.mark.parametrize("block_size", [4, 8])
def test_i1_denoiser_at_init_with_causal_blocks_equals_context(model, tokens, block_size):
    """adaLN at init + causal in-block mask ⇒ denoiser logits == context logits everywhere."""
    reference = model.context_tower(tokens).logits
    t = torch.rand(2, LENGTH // block_size)
    logits = model(tokens, tokens, t, block_size, causal_in_block=True)
    torch.testing.assert_close(logits, reference, rtol=0, atol=ATOL)
    # Non-vacuous: the bidirectional in-block mask does change the outputs.
    assert (model(tokens, tokens, t, block_size) - reference).abs().max() > 1e-3


def test_boundary_states_do_not_depend_on_block_size(model, tokens):
    s4 = model.context_tower(tokens, state_stride=4)
    s8 = model.context_tower(tokens, state_stride=8)
    torch.testing.assert_close(s4.logits, s8.logits, rtol=0, atol=0)
    for layer, bounds in s8.boundaries.items():
        torch.testing.assert_close(bounds.ssm, s4.boundaries[layer].ssm[:, ::2], rtol=0, atol=ATOL)
        torch.testing.assert_close(
            bounds.conv, s4.boundaries[layer].conv[:, ::2], rtol=0, atol=ATOL
        )


@pytest.mark.parametrize("block_size", [4, 8])
def test_i2_block_locality(model, tokens, tiny_cfg, block_size):
    """Block b's outputs ignore clean tokens at ≥ p = b·S and noisy tokens of other blocks."""
    randomise_adaln(model)
    block = 2
    p, end = block * block_size, (block + 1) * block_size
    noisy = noisy_version(tokens, tiny_cfg.mask_token_id)
    t = torch.rand(2, LENGTH // block_size)
    base = model(tokens, noisy, t, block_size)[:, p:end]

    clean_future = tokens.clone()
    clean_future[:, p:] = torch.randint(4, tiny_cfg.vocab_size, clean_future[:, p:].shape)
    other_noisy = noisy.clone()
    other_noisy[:, :p] = tiny_cfg.mask_token_id
    other_noisy[:, end:] = torch.randint(4, tiny_cfg.vocab_size, other_noisy[:, end:].shape)
    other_t = t.clone()
    other_t[:, [i for i in range(t.shape[1]) if i != block]] = 0.5
    for clean, noisy_in, times in [
        (clean_future, noisy, t),
        (tokens, other_noisy, t),
        (tokens, noisy, other_t),
    ]:
        out = model(clean, noisy_in, times, block_size)[:, p:end]
        torch.testing.assert_close(out, base, rtol=0, atol=ATOL)

    # Non-vacuous: the clean past, the block's own tokens and its own time do matter.
    clean_past = tokens.clone()
    clean_past[:, p - 1] = (tokens[:, p - 1] + 1) % tiny_cfg.vocab_size
    own_t = t.clone()
    own_t[:, block] = 1 - t[:, block]
    assert (model(clean_past, noisy, t, block_size)[:, p:end] - base).abs().max() > 1e-4
    assert (model(tokens, noisy, own_t, block_size)[:, p:end] - base).abs().max() > 1e-4


@pytest.mark.parametrize("block_size", [4, 8])
def test_i3_vectorised_equals_incremental(model, tokens, tiny_cfg, block_size):
    randomise_adaln(model)
    noisy = noisy_version(tokens, tiny_cfg.mask_token_id)
    t = torch.rand(2, LENGTH // block_size)
    vectorised = model(tokens, noisy, t, block_size)
    prompt = block_size  # prefill one block, then decode block by block
    cache = model.prefill(tokens[:, :prompt]).cache
    for b in range(prompt // block_size, LENGTH // block_size):
        lo, hi = b * block_size, (b + 1) * block_size
        logits = model.denoise_block(cache, noisy[:, lo:hi], t[:, b])
        torch.testing.assert_close(logits, vectorised[:, lo:hi], rtol=0, atol=ATOL)
        cache = model.advance(cache, tokens[:, lo:hi]).cache
    assert cache.length == LENGTH


def test_incremental_left_padded_batch(model, tokens, tiny_cfg):
    """Prompts of different lengths, left-padded in one batch, decode like each one alone."""
    randomise_adaln(model)
    S = 8
    lengths = [16, 11]
    width = max(lengths)
    batch = torch.zeros(2, width, dtype=torch.long)
    valid = torch.zeros(2, width, dtype=torch.bool)
    for row, n in enumerate(lengths):
        batch[row, width - n :] = tokens[row, :n]
        valid[row, width - n :] = True
    noisy = noisy_version(tokens, tiny_cfg.mask_token_id)[:, :S]
    t = torch.tensor([0.3, 0.7])
    batched = model.prefill(batch, valid=valid)
    block_logits = model.denoise_block(batched.cache, noisy, t)
    after = model.advance(batched.cache, tokens[:, 16:24])
    for row, n in enumerate(lengths):
        alone = model.prefill(tokens[row : row + 1, :n])
        torch.testing.assert_close(batched.logits[row], alone.logits[0], rtol=0, atol=ATOL)
        alone_block = model.denoise_block(alone.cache, noisy[row : row + 1], t[row : row + 1])
        torch.testing.assert_close(block_logits[row], alone_block[0], rtol=0, atol=ATOL)
        alone_after = model.advance(alone.cache, tokens[row : row + 1, 16:24])
        torch.testing.assert_close(after.logits[row], alone_after.logits[0], rtol=0, atol=ATOL)


def test_context_tower_frozen(model, tokens, tiny_cfg):
    randomise_adaln(model)
    model.train()
    assert not model.context_tower.training and model.denoiser.training
    noisy = noisy_version(tokens, tiny_cfg.mask_token_id)
    logits = model(tokens, noisy, torch.rand(2, LENGTH // 8), 8)
    logits.float().logsumexp(-1).mean().backward()
    assert all(p.grad is None and not p.requires_grad for p in model.context_tower.parameters())
    trainable = {id(p) for p in model.trainable_parameters()}
    assert trainable == {id(p) for p in model.denoiser.parameters()}
    assert not trainable & {id(p) for p in model.context_tower.parameters()}
    assert all(p.grad is not None for p in model.trainable_parameters())
    assert all(getattr(m, "frozen_expert_bias", True) for m in model.context_tower.modules())


def test_flex_block_sparse_path_equals_dense(model, tokens, tiny_cfg):
    """The model's denoiser through FlexAttention block masks == the dense reference."""
    randomise_adaln(model)
    noisy = noisy_version(tokens, tiny_cfg.mask_token_id)
    t = torch.rand(2, LENGTH // 8)
    with torch.no_grad():
        with forced_backend(AttentionBackend.DENSE):
            dense = model(tokens, noisy, t, 8)
        with forced_backend(AttentionBackend.FLEX):
            flex = model(tokens, noisy, t, 8)
    torch.testing.assert_close(flex, dense, rtol=0, atol=ATOL)


def test_single_token_steps_equal_one_chunked_forward(model, tokens, tiny_cfg):
    """AR steps (one token each: the Mamba layers take the single-state update of
    ``ops.ssd.ssd_step`` / ``ops.conv.conv_step``, not the chunked scan) give the logits and the
    caches of one chunked forward over the same tokens; so does a lone mock-AR query, against
    the first position of a causal block (its Mamba layers see only that position)."""
    randomise_adaln(model)
    prompt = 20
    full = model.prefill(tokens, logits="all")
    step = model.prefill(tokens[:, :1])  # a one-token prefill steps from empty states
    torch.testing.assert_close(step.logits[:, 0], full.logits[:, 0], rtol=0, atol=ATOL)
    step = model.advance(step.cache, tokens[:, 1:prompt])
    for j in range(prompt, LENGTH):
        step = model.advance(step.cache, tokens[:, j : j + 1])
        torch.testing.assert_close(step.logits[:, 0], full.logits[:, j], rtol=0, atol=ATOL)
    assert step.cache.mamba.keys() == full.cache.mamba.keys() and step.cache.mamba
    for i, states in full.cache.mamba.items():
        torch.testing.assert_close(step.cache.mamba[i].conv, states.conv, rtol=0, atol=ATOL)
        torch.testing.assert_close(step.cache.mamba[i].ssm, states.ssm, rtol=0, atol=ATOL)
    cache = model.prefill(tokens[:, :prompt]).cache
    block = noisy_version(tokens, tiny_cfg.mask_token_id)[:, prompt : prompt + 8]
    t = torch.tensor([0.4, 1.0])
    causal = model.denoise_block(cache, block, t, causal_in_block=True)
    lone = model.denoise_block(cache, block[:, :1], t)
    torch.testing.assert_close(lone[:, 0], causal[:, 0], rtol=0, atol=ATOL)
