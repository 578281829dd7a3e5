"""Tests for twotower_train.diffusion.corruption (block-wise masking and time sampling)."""

import math

import pytest
import torch

from twotower_train.diffusion.corruption import (
    TimeSampling,
    corrupt_blocks,
    sample_block_times,
    shifted_loss_positions,
)

MASK_ID = 3


def _tokens(batch, seq_len, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(4, 1000, (batch, seq_len), generator=g)  # never MASK_ID


def test_noisy_and_realised_time_are_exact():
    tokens = _tokens(4, 64)
    out = corrupt_blocks(tokens, 16, MASK_ID, generator=torch.Generator().manual_seed(1))
    assert out.noisy.shape == out.masked.shape == (4, 64)
    assert out.t_sampled.shape == out.t_realised.shape == (4, 4)
    assert torch.equal(out.noisy[out.masked], torch.full_like(out.noisy[out.masked], MASK_ID))
    assert torch.equal(out.noisy[~out.masked], tokens[~out.masked])
    for b in range(4):
        for blk in range(4):
            count = int(out.masked[b, blk * 16 : (blk + 1) * 16].sum())
            assert out.t_realised[b, blk].item() == count / 16  # exact: k/16 is representable


@pytest.mark.parametrize("sampling", list(TimeSampling))
def test_mask_rate_follows_each_block_time(sampling):
    # Per block, #masked ~ Binomial(S, t_b). Within each t bin the total masked count has mean
    # sum(S t_b) and variance sum(S t_b (1 - t_b)); we allow 5 standard deviations (a false
    # failure has probability < 1e-6 per bin). Binning by t checks that each block uses its own
    # t (a shared rate would overshoot low bins and undershoot high ones by many sigmas).
    block = 32
    tokens = _tokens(64, 32 * block)
    out = corrupt_blocks(
        tokens, block, MASK_ID, sampling=sampling, generator=torch.Generator().manual_seed(2)
    )
    counts = out.masked.view(64, 32, block).sum(-1).double()  # (b, n_blocks)
    t = out.t_sampled.double()
    for lo in (0.0, 0.25, 0.5, 0.75):
        sel = (t >= lo) & (t < lo + 0.25)
        assert sel.sum() > 50
        mean = (block * t[sel]).sum()
        std = math.sqrt((block * t[sel] * (1 - t[sel])).sum())
        assert abs(counts[sel].sum() - mean) <= 5 * std


def test_maskable_positions_are_never_masked():
    tokens = _tokens(8, 64)
    maskable = torch.ones_like(tokens, dtype=torch.bool)
    maskable[:, :20] = False
    out = corrupt_blocks(
        tokens, 16, MASK_ID, maskable=maskable, generator=torch.Generator().manual_seed(3)
    )
    assert not out.masked[:, :20].any()
    assert out.masked[:, 20:].any()
    # t_realised still divides by S (what the sampler feeds).
    assert torch.equal(out.t_realised, out.masked.view(8, 4, 16).float().sum(-1) / 16)


@pytest.mark.parametrize("sampling", list(TimeSampling))
def test_deterministic_with_generator(sampling):
    tokens = _tokens(4, 64)
    a = corrupt_blocks(
        tokens, 8, MASK_ID, sampling=sampling, generator=torch.Generator().manual_seed(7)
    )
    b = corrupt_blocks(
        tokens, 8, MASK_ID, sampling=sampling, generator=torch.Generator().manual_seed(7)
    )
    c = corrupt_blocks(
        tokens, 8, MASK_ID, sampling=sampling, generator=torch.Generator().manual_seed(8)
    )
    assert torch.equal(a.noisy, b.noisy) and torch.equal(a.t_sampled, b.t_sampled)
    assert not torch.equal(a.t_sampled, c.t_sampled)


@pytest.mark.parametrize("sampling", list(TimeSampling))
def test_times_lie_in_range(sampling):
    eps = 0.05
    t = sample_block_times(
        16, 9, eps=eps, sampling=sampling, generator=torch.Generator().manual_seed(4)
    )
    assert t.shape == (16, 9) and t.dtype == torch.float32
    assert (t >= eps - 1e-7).all() and (t <= 1.0 + 1e-7).all()


def test_stratified_has_one_draw_per_stratum_and_is_shuffled():
    eps, batch, n_blocks = 1e-3, 8, 16
    n = batch * n_blocks
    t = sample_block_times(
        batch,
        n_blocks,
        eps=eps,
        sampling=TimeSampling.STRATIFIED,
        generator=torch.Generator().manual_seed(5),
    )
    ordered = t.flatten().sort().values.double()
    k = torch.arange(n, dtype=torch.float64)
    lower = eps + (1 - eps) * k / n
    upper = eps + (1 - eps) * (k + 1) / n
    # 1e-6 slack: the draws are float32 (spacing ~6e-8 near 1).
    assert ((ordered >= lower - 1e-6) & (ordered <= upper + 1e-6)).all()
    assert not torch.equal(t.flatten(), t.flatten().sort().values)


@pytest.mark.parametrize("n_blocks", [8, 7])
def test_antithetic_pairs_sum_to_one_plus_eps(n_blocks):
    eps, batch = 0.01, 3
    t = sample_block_times(
        batch,
        n_blocks,
        eps=eps,
        sampling=TimeSampling.ANTITHETIC,
        generator=torch.Generator().manual_seed(6),
    )
    flat = t.flatten()
    n_pairs = flat.numel() // 2
    sums = flat[0 : 2 * n_pairs : 2] + flat[1 : 2 * n_pairs : 2]
    # float32 rounding of 1 + eps - t: |error| <= 1 ulp(1) ~ 1.2e-7.
    torch.testing.assert_close(sums, torch.full_like(sums, 1 + eps), atol=2.5e-7, rtol=0)


def test_validation_errors():
    tokens = _tokens(2, 30)
    with pytest.raises(ValueError, match="must divide"):
        corrupt_blocks(tokens, 8, MASK_ID)
    with pytest.raises(ValueError, match="mask_id"):
        corrupt_blocks(tokens, 5, -1)
    with pytest.raises(ValueError, match="already contain mask_id"):
        corrupt_blocks(tokens, 5, int(tokens[0, 0]))
    with pytest.raises(ValueError, match="eps"):
        corrupt_blocks(tokens, 5, MASK_ID, eps=0.0)
    with pytest.raises(ValueError, match="batch, seq_len"):
        corrupt_blocks(tokens[0], 5, MASK_ID)


def test_shifted_loss_positions():
    masked = torch.tensor([[True, True, False, True, True, False, True, True]])
    scored, heads = shifted_loss_positions(masked, 4)
    # Block starts (0 and 4) carry no loss; every other masked position is scored from i − 1.
    assert scored.tolist() == [[False, True, False, True, False, False, True, True]]
    assert heads.tolist() == [[True, False, True, False, False, True, True, False]]
    assert torch.equal(heads.nonzero()[:, 1] + 1, scored.nonzero()[:, 1])
    with pytest.raises(ValueError, match="at least 2"):
        shifted_loss_positions(masked, 1)
