"""The two log-likelihood scorers against independent references (fp32, tiny random model)."""

from __future__ import annotations

import pytest
import torch

from twotower_train.decoding.samplers import left_pad
from twotower_train.eval.scoring import score_ar, score_mock_ar
from twotower_train.model.backbone import forward_logits
from twotower_train.model.two_tower import TwoTowerModel

MASK = 3
# Different context and continuation lengths (left padding, right padding, a 1-token context
# and a 1-token continuation).
PAIRS = [
    ([5, 17, 99, 240, 31, 7], [12, 400, 9]),
    ([8], [44, 45, 46, 47, 48]),
    ([100, 200, 300], [7]),
]


@pytest.fixture
def model(single_process, tiny_cfg):
    model = TwoTowerModel.build(tiny_cfg).eval()
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():  # a non-trivial denoiser (time conditioning, weights off the backbone)
        for p in model.denoiser.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.02)
    return model


def test_ar_scores_are_the_backbones_summed_log_probs(model):
    scores = score_ar(model, PAIRS)
    for (ctx, cont), (logprob, greedy) in zip(PAIRS, scores):
        seq = torch.tensor([ctx + cont])
        logits = forward_logits(model.backbone, seq)[0].float().log_softmax(-1)  # (L, V)
        rows = logits[len(ctx) - 1 : -1]  # the positions that predict the continuation
        expected = rows.gather(-1, torch.tensor(cont).unsqueeze(-1)).sum()
        assert logprob == pytest.approx(float(expected), abs=1e-4)
        assert greedy == bool((rows.argmax(-1) == torch.tensor(cont)).all())


def test_ar_greedy_flag(model):
    ctx = [5, 17, 99]
    logits = forward_logits(model.backbone, torch.tensor([ctx]))[0, -1]
    best = int(logits.argmax())
    (_, greedy), (_, not_greedy) = score_ar(model, [(ctx, [best]), (ctx, [(best + 1) % 4000 + 4])])
    assert greedy and not not_greedy


@pytest.mark.parametrize("query_block_size", [1, 4])
def test_mock_ar_scores_equal_fresh_prefills(model, query_block_size):
    """Reference: for every continuation token j, a fresh prefill of context + cont[:j] and one
    denoiser query — no rollback, no batching."""
    scores = score_mock_ar(model, PAIRS, MASK, query_block_size=query_block_size)
    for (ctx, cont), (logprob, greedy) in zip(PAIRS, scores):
        total, all_greedy = 0.0, True
        for j, token in enumerate(cont):
            tokens, valid = left_pad([ctx + cont[:j]], 0)
            cache = model.prefill(tokens, valid=valid, logits="none").cache
            query = torch.full((1, query_block_size), MASK)
            logits = model.denoise_block(cache, query, torch.ones(1))[0, 0].float()
            logits[MASK] = float("-inf")
            total += float(logits.log_softmax(-1)[token])
            all_greedy &= int(logits.argmax()) == token
        assert logprob == pytest.approx(total, abs=1e-4)
        assert greedy == all_greedy


def test_empty_pairs_are_refused(model):
    with pytest.raises(ValueError, match="non-empty"):
        score_ar(model, [([], [5])])
