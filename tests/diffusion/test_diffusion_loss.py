"""Tests for twotower_train.diffusion.loss (MEAN / ELBO weighting and the AR loss)."""

import pytest
import torch

from twotower_train.diffusion.loss import LossWeighting, ar_loss, masked_diffusion_loss

NLL = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]])
MASKED = torch.tensor([[True, False, True, False], [False, False, False, True]])
T_BLOCK = torch.tensor([[0.5, 0.25], [0.5, 0.8]])  # S = 2


def test_mean_hand_computed():
    out = masked_diffusion_loss(NLL, MASKED)
    # (1 + 3 + 8) / 3 masked positions; exact in fp32.
    assert out.loss.item() == 4.0
    assert out.num_masked.item() == 3
    assert out.numerator.item() == 12.0 and out.denominator.item() == 3.0


def test_elbo_hand_computed_per_block_and_per_position_times():
    # 1/0.5 + 3/0.25 + 8/0.8 = 2 + 12 + 10 = 24, divided by b*L = 8 tokens.
    out = masked_diffusion_loss(NLL, MASKED, T_BLOCK, weighting=LossWeighting.ELBO)
    torch.testing.assert_close(out.loss, torch.tensor(3.0), rtol=1e-6, atol=0)
    assert out.denominator.item() == 8.0 and out.num_masked.item() == 3
    t_pos = T_BLOCK.repeat_interleave(2, dim=1)
    same = masked_diffusion_loss(NLL, MASKED, t_pos, weighting=LossWeighting.ELBO)
    assert torch.equal(out.loss, same.loss)


@pytest.mark.parametrize("weighting", list(LossWeighting))
def test_unmasked_positions_get_zero_grad_even_if_not_finite(weighting):
    nll = NLL.clone()
    nll[0, 1] = float("inf")  # an unmasked position with a non-finite NLL
    nll.requires_grad_(True)
    t = T_BLOCK.clone()
    t[1, 0] = 0.0  # a block with no masked position may have t_realised = 0
    out = masked_diffusion_loss(nll, MASKED, t, weighting=weighting)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert torch.equal(nll.grad[~MASKED], torch.zeros(int((~MASKED).sum())))
    assert (nll.grad[MASKED] > 0).all()


def test_no_masked_positions_gives_zero_loss():
    out = masked_diffusion_loss(NLL, torch.zeros_like(MASKED))
    assert out.loss.item() == 0.0 and out.num_masked.item() == 0


def test_elbo_needs_times_and_checks_shape():
    with pytest.raises(ValueError, match="needs the per-block times"):
        masked_diffusion_loss(NLL, MASKED, weighting=LossWeighting.ELBO)
    with pytest.raises(ValueError, match="does not divide"):
        masked_diffusion_loss(NLL, MASKED, torch.ones(2, 3), weighting=LossWeighting.ELBO)


def test_ar_loss_is_masked_mean():
    loss_mask = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 1.0, 1.0, 1.0]])  # Megatron float mask
    out = ar_loss(NLL, loss_mask)
    # 24 / 5 = 4.8 is not representable: compare at fp32 resolution.
    torch.testing.assert_close(out.loss, torch.tensor(4.8), rtol=1e-6, atol=0)
    assert out.num_masked.item() == 5
