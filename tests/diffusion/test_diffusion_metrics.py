"""Tests for twotower_train.diffusion.metrics (sums that reduce exactly)."""

import math

import torch

from twotower_train.diffusion.metrics import diffusion_step_sums


def _example():
    nll = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]])
    targets = torch.tensor([[10, 11, 12, 13], [14, 15, 16, 17]])
    preds = torch.tensor([[10, 0, 0, 13], [14, 15, 0, 17]])
    masked = torch.tensor([[True, False, True, True], [False, True, True, True]])
    t_block = torch.tensor([[0.1, 0.6], [1.0, 0.3]])  # S = 2
    return nll, preds, targets, masked, t_block


def test_hand_computed_summary():
    s = diffusion_step_sums(*_example()).summary()
    # masked: (0,0) ok t=.1 | (0,2) wrong t=.6 | (0,3) ok t=.6 | (1,1) ok t=1 | (1,2),(1,3) t=.3
    assert s["masked_acc"] == 4 / 6  # (1,2) and (0,2) wrong
    assert s["masked_nll"] == (1 + 3 + 4 + 6 + 7 + 8) / 6
    assert math.isclose(s["mean_t"], (0.1 + 0.6 + 1.0 + 0.3) / 4, rel_tol=1e-6)
    assert s["nll_t0.00-0.25"] == 1.0
    assert s["nll_t0.25-0.50"] == 7.5
    assert s["nll_t0.50-0.75"] == 3.5
    assert s["nll_t0.75-1.00"] == 6.0


def test_sums_combine_exactly():
    nll, preds, targets, masked, t = _example()
    whole = diffusion_step_sums(nll, preds, targets, masked, t)
    halves = [
        diffusion_step_sums(
            nll[i : i + 1], preds[i : i + 1], targets[i : i + 1], masked[i : i + 1], t[i : i + 1]
        )
        for i in range(2)
    ]
    combined = halves[0] + halves[1]
    assert combined.summary() == whole.summary()
    # As a data-parallel all_reduce(SUM) would: stack, sum, rebuild.
    reduced = whole.from_tensor(halves[0].to_tensor() + halves[1].to_tensor())
    assert reduced.values == whole.values


def test_empty_bucket_is_nan():
    nll, preds, targets, masked, t = _example()
    s = diffusion_step_sums(nll, preds, targets, masked, t, num_t_buckets=10).summary()
    assert math.isnan(s["nll_t0.80-0.90"])
