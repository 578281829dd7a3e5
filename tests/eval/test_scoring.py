"""The two log-likelihood scorers against independent references (fp32, tiny random model)."""

from __future__ import annotations

import pytest
import torch

from twotower_train.decoding.samplers import left_pad
from twotower_train.eval.scoring import score_ar, score_mock_ar
from twotower_train.model.backbone import forward_logits
from twotower_train.model.two_tower import TwoTowerModel

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


def _fresh_cache(model, prefix: list[int]):
    """A fresh prefill of ``prefix`` (an empty prefix: one padding position)."""
    if not prefix:
        return model.prefill(torch.zeros(1, 1, dtype=torch.long), valid=torch.zeros(1, 1).bool())
    tokens, valid = left_pad([prefix], 0)
    return model.prefill(tokens, valid=valid, logits="none")


def test_mock_ar_scores_are_the_released_mock_ar_in_one_denoiser_forward(model):
    """Reference: for every continuation token j, a fresh prefill of everything before the token
    in front of it, then the unmodulated denoiser on that one token — no batching, no position
    states. The scorer makes one denoiser forward for the whole batch."""
    calls = []
    denoise = model.denoise_block

    def counted(cache, block, t, **kw):
        calls.append((block.shape, t))
        return denoise(cache, block, t, **kw)

    model.denoise_block = counted
    scores = score_mock_ar(model, PAIRS)
    widest = max(len(cont) for _, cont in PAIRS)
    assert calls == [((len(PAIRS) * widest, 1), None)]
    model.denoise_block = denoise
    for (ctx, cont), (logprob, greedy) in zip(PAIRS, scores):
        seq, total, all_greedy = ctx + cont, 0.0, True
        for j, token in enumerate(cont):
            p = len(ctx) + j  # the position token j sits at
            cache = _fresh_cache(model, seq[: p - 1]).cache
            logits = model.denoise_block(cache, torch.tensor([[seq[p - 1]]]), None)[0, 0].float()
            total += float(logits.log_softmax(-1)[token])
            all_greedy &= int(logits.argmax()) == token
        assert logprob == pytest.approx(total, abs=1e-4)
        assert greedy == all_greedy
    ar = score_ar(model, PAIRS)
    assert all(abs(a[0] - m[0]) > 1e-3 for a, m in zip(ar, scores))  # never the AR scores


def test_empty_pairs_are_refused(model):
    with pytest.raises(ValueError, match="non-empty"):
        score_ar(model, [([], [5])])
