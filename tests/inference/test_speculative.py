"""Self-speculative decoding: cache rollback and token identity with AR greedy.

An untrained denoiser almost never drafts the AR token, so most tests draft with an oracle:
a wrapper whose ``denoise_block`` proposes the AR tower's greedy continuation (computed
beforehand with ``generate_ar``) and corrupts a seeded random subset of positions. Every round
then accepts a different prefix per row, which exercises the per-row rollback of the real
context tower (Mamba, attention and MoE layers) — a wrong rollback changes the AR tokens that
follow it.
"""

from __future__ import annotations

import pytest
import torch

from tests.inference.live_rows import follow_live_rows
from twotower_train.decoding.cache import ContextCache
from twotower_train.decoding.samplers import ARConfig, generate_ar, left_pad
from twotower_train.decoding.speculative import SpeculativeConfig, generate_speculative
from twotower_train.model.two_tower import TwoTowerModel

MASK = 3


def _model(cfg, seed: int) -> TwoTowerModel:
    torch.manual_seed(seed)
    model = TwoTowerModel.build(cfg).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # random weights beyond Megatron's init, so tokens vary with the seed
        for p in model.context_tower.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    return model


@pytest.fixture
def model(single_process, tiny_cfg):
    return _model(tiny_cfg, 0)


class OracleDrafter:
    """``model`` with a denoiser that drafts the known AR continuation, wrong at random."""

    def __init__(self, model, prompts, continuation, wrong: float, seed: int):
        self.model, self.continuation = model, continuation
        self.prompt_lengths = [len(p) for p in prompts]
        self.wrong, self.gen = wrong, torch.Generator().manual_seed(seed)
        self.context_device = self.denoiser_device = model.context_device
        self.prefill, self.advance = model.prefill, model.advance
        self.live = list(range(len(prompts)))  # the prompts in the batch (rows leave it)

    def denoise_block(self, cache: ContextCache, block, t):
        batch, size = block.shape
        vocab = self.model.cfg.vocab_size
        logits = torch.zeros(batch, size, vocab)
        lengths = torch.tensor([self.prompt_lengths[p] for p in self.live])
        generated = cache.valid.sum(-1) - lengths  # (b,)
        for r in range(batch):
            for j in range(size):
                index = int(generated[r]) + j
                truth = self.continuation[self.live[r]]
                token = truth[index] if index < len(truth) else 5
                if torch.rand((), generator=self.gen) < self.wrong:
                    shift = 1 + int(torch.randint(vocab - 5, (), generator=self.gen))
                    token = (token + shift) % vocab
                    token = token if token != MASK else MASK + 1
                logits[r, j, token] = 10.0
        return logits


def _check_same_as_ar(model, prompts, block_size, *, max_new=20, eos=None, wrong=0.3, seed=0):
    ar = generate_ar(model, prompts, ARConfig(max_new_tokens=max_new, eos_token_id=eos))
    # The drafter's script runs past the AR output (past EOS, one block further): truth up to
    # where the AR tower would go without stopping.
    long = generate_ar(model, prompts, ARConfig(max_new_tokens=max_new + block_size))
    drafter = OracleDrafter(model, prompts, long.tokens, wrong, seed)
    with pytest.MonkeyPatch.context() as monkeypatch:
        follow_live_rows([drafter], monkeypatch)
        spec = _run(drafter, prompts, block_size, max_new, eos)
    assert spec.tokens == ar.tokens
    return spec


def _run(drafter, prompts, block_size, max_new, eos):
    config = SpeculativeConfig(
        max_new_tokens=max_new,
        block_size=block_size,
        steps_per_block=2,
        eos_token_id=eos,
        mask_token_id=MASK,
    )
    return generate_speculative(drafter, prompts, config)


@pytest.mark.parametrize("block_size", [4, 8, 16])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_speculative_equals_ar_greedy(single_process, tiny_cfg, seed, block_size):
    model = _model(tiny_cfg, seed)
    gen = torch.Generator().manual_seed(seed)
    # Left-padded batch; prompt lengths that are not multiples of S.
    prompts = [
        torch.randint(4, tiny_cfg.vocab_size, (n,), generator=gen).tolist()
        for n in (block_size + 3, 5, 2 * block_size - 1)
    ]
    spec = _check_same_as_ar(model, prompts, block_size, seed=seed)
    # Drafts were accepted (up to S−1 per round) and rejected, with different prefixes per row.
    assert 0 < spec.accepted_per_verify < block_size - 1
    assert spec.verify_forwards < spec.generated


def test_eos_inside_a_draft(model):
    prompts = [[5, 17, 99, 240, 31, 7], [12, 400, 9]]
    free = generate_ar(model, prompts, ARConfig(max_new_tokens=12)).tokens
    eos = free[0][6]  # row 0 stops at its 7th token, inside an 8-wide block
    spec = _check_same_as_ar(model, prompts, 8, max_new=12, eos=eos, wrong=0.0)
    assert spec.tokens[0][-1] == eos and len(spec.tokens[0]) == free[0].index(eos) + 1


def test_perfect_drafts_commit_a_block_per_verify(model):
    prompts = [[5, 17, 99, 240, 31, 7]]
    spec = _check_same_as_ar(model, prompts, 8, max_new=17, wrong=0.0)
    # Prefill gives the first token; each verify then accepts all 7 drafts + the AR token.
    assert spec.verify_forwards == 2 and spec.accepted_per_verify == 7.0


def test_real_denoiser_drafts_are_verified(model):
    """The untrained denoiser's own drafts: whatever it proposes, the output is AR's."""
    prompts = [[5, 17, 99, 240, 31, 7], [12, 400, 9]]
    ar = generate_ar(model, prompts, ARConfig(max_new_tokens=10))
    spec = generate_speculative(model, prompts, SpeculativeConfig(max_new_tokens=10, block_size=4))
    assert spec.tokens == ar.tokens and spec.denoiser_forwards > 0


def test_rollback_equals_fresh_prefill(model):
    """After a rejection, the rolled-back cache is the prefill of the accepted tokens."""
    prompts = [[5, 17, 99, 240, 31, 7], [12, 400, 9], [8, 8, 1000, 77]]
    tokens, valid = left_pad(prompts, 0)
    previous = model.prefill(tokens, valid=valid, logits="none").cache
    new = torch.randint(4, 4000, (3, 6), generator=torch.Generator().manual_seed(0))
    advanced = model.advance(previous, new, logits="none", position_states=True)
    keep = torch.tensor([2, 0, 6])
    rolled = advanced.rollback(previous, keep)
    kept = [p + new[r, : int(keep[r])].tolist() for r, p in enumerate(prompts)]
    fresh = model.prefill(*left_pad(kept, 0), logits="none").cache
    for r, seq in enumerate(kept):
        assert int(rolled.valid[r].sum()) == len(seq)  # rejected positions are holes
        for i in fresh.keys:
            for ours, theirs in ((rolled.keys, fresh.keys), (rolled.values, fresh.values)):
                a = ours[i][r][:, rolled.valid[r]]
                b = theirs[i][r][:, fresh.valid[r]]
                torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
        for i in fresh.mamba:
            torch.testing.assert_close(rolled.mamba[i].conv[r], fresh.mamba[i].conv[r])
            torch.testing.assert_close(
                rolled.mamba[i].ssm[r], fresh.mamba[i].ssm[r], atol=1e-5, rtol=1e-4
            )
    # Decoding continues identically from both caches.
    step = torch.tensor([[11], [12], [13]])
    ours = model.advance(rolled, step, logits="last").logits
    theirs = model.advance(fresh, step, logits="last").logits
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


def test_rollback_rejects_bad_lengths(model):
    tokens, valid = left_pad([[5, 6, 7]], 0)
    previous = model.prefill(tokens, valid=valid, logits="none").cache
    advanced = model.advance(previous, torch.tensor([[8, 9]]), logits="none", position_states=True)
    with pytest.raises(ValueError, match="keep must be"):
        advanced.rollback(previous, torch.tensor([3]))
    without = model.advance(previous, torch.tensor([[8, 9]]), logits="none")
    with pytest.raises(ValueError, match="position_states"):
        without.rollback(previous, torch.tensor([1]))


def test_speculative_is_greedy_only():
    from twotower_train.decoding.sampling import TokenChoice

    with pytest.raises(ValueError, match="temperature=0"):
        SpeculativeConfig(choice=TokenChoice(temperature=0.7))
