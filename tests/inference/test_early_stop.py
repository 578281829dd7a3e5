"""Rows that stop early: EOS inside a block, max_new_tokens inside a block, on_commit stops, and
what the per-forward statistics charge for them."""

from __future__ import annotations

import pytest
import torch

from tests.inference.live_rows import follow_live_rows
from twotower_train.decoding.samplers import (
    ARConfig,
    MaskDiffusionConfig,
    MockARConfig,
    generate_ar,
    generate_mask_diffusion,
    generate_mock_ar,
)
from twotower_train.model.two_tower import TwoTowerModel

PROMPTS = [[5, 17, 99, 240, 31, 7], [12, 400, 9]]
EOS = 2


@pytest.fixture
def model(single_process, tiny_cfg):
    model = TwoTowerModel.build(tiny_cfg).eval()
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.denoiser.adaln.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    return model


class ScriptedDenoiser:
    """The real context tower; a denoiser that proposes ``tokens[r][j]`` at block position j
    with confidence growing with ``rank[r][j]`` (so γ = 1 commits one position per step, in
    ``rank`` order)."""

    def __init__(self, model, tokens, rank):
        self.tokens, self.rank = torch.tensor(tokens), torch.tensor(rank, dtype=torch.float)
        self.vocab = model.cfg.vocab_size
        self.context_device = self.denoiser_device = model.context_device
        self.prefill, self.advance = model.prefill, model.advance
        self.calls = 0
        self.live = list(range(len(tokens)))  # follow_live_rows keeps it current

    def denoise_block(self, cache, block, t):
        self.calls += 1
        tokens, rank = self.tokens[self.live], self.rank[self.live]
        logits = torch.zeros(*block.shape, self.vocab)
        logits.scatter_(-1, tokens.unsqueeze(-1), (5.0 + rank).unsqueeze(-1))
        return logits


@pytest.fixture(autouse=True)
def _live_rows(monkeypatch):
    """Every ScriptedDenoiser built in a test follows the rows that stay in the batch."""
    built = []
    init = ScriptedDenoiser.__init__

    def tracking_init(self, *args):
        init(self, *args)
        built.append(self)

    monkeypatch.setattr(ScriptedDenoiser, "__init__", tracking_init)
    follow_live_rows(built, monkeypatch)


def _floor_only(**kw) -> MaskDiffusionConfig:
    return MaskDiffusionConfig(block_size=8, steps_per_block=8, confidence_threshold=1.0, **kw)


def test_block_stops_once_every_row_is_settled(model):
    # Row 0: EOS at position 2, committed first, then positions 0 and 1 → settled after 3
    # forwards. Row 1: no EOS; needs all 8 positions of each block.
    tokens = [[20, 21, EOS, 23, 24, 25, 26, 27], list(range(30, 38))]
    rank = [[6, 5, 7, 4, 3, 2, 1, 0], [7, 6, 5, 4, 3, 2, 1, 0]]
    scripted = ScriptedDenoiser(model, tokens, rank)
    config = _floor_only(max_new_tokens=16, eos_token_id=EOS)
    out = generate_mask_diffusion(scripted, PROMPTS, config)
    assert out.tokens == [[20, 21, EOS], list(range(30, 38)) * 2]
    assert scripted.calls == out.denoiser_forwards == 16  # row 1: two blocks of 8 steps
    assert out.row_denoiser_forwards == 3 + 16  # row 0 is charged its 3 forwards only
    assert out.tokens_per_forward == (3 + 16) / (3 + 16)


def test_finished_rows_leave_the_batch_and_free_tokens_are_apart(model):
    """Row 0 ends at EOS in its first block and leaves the batch: the second block's forwards
    run on row 1 alone. With a shifted denoiser each block's first token is the context
    tower's choice: counted in ``context_tokens``, left out of the denoiser's own rate."""
    tokens = [[20, 21, EOS, 23, 24, 25, 26, 27], list(range(30, 38))]
    rank = [[6, 5, 7, 4, 3, 2, 1, 0], [7, 6, 5, 4, 3, 2, 1, 0]]
    scripted = ScriptedDenoiser(model, tokens, rank)
    scripted.denoiser_shift = True
    widths = []
    denoise = scripted.denoise_block
    scripted.denoise_block = lambda cache, block, t: (
        widths.append(len(block)) or denoise(cache, block, t)
    )
    out = generate_mask_diffusion(
        scripted, PROMPTS, _floor_only(max_new_tokens=16, eos_token_id=EOS)
    )
    assert widths == [2] * 8 + [1] * 8  # the second block: row 1 alone
    assert out.context_tokens == 1 + 2  # row 0: one block; row 1: two
    assert out.tokens_per_batch_forward == out.generated / 16
    assert out.denoiser_tokens_per_forward == (out.generated - 3) / out.row_denoiser_forwards


def test_max_new_tokens_inside_a_block_stops_early(model):
    tokens = [list(range(20, 28))] * 2
    rank = [[7, 6, 5, 4, 3, 2, 1, 0]] * 2  # left to right
    scripted = ScriptedDenoiser(model, tokens, rank)
    out = generate_mask_diffusion(scripted, PROMPTS, _floor_only(max_new_tokens=10))
    # 8 steps for the first block, then 2 for the 2 positions the rows still need.
    assert out.tokens == [list(range(20, 28)) + [20, 21]] * 2 and out.denoiser_forwards == 10


def test_eos_leaves_the_tokens_unchanged(model):
    """Stopping a block early only skips commits that are discarded: the output equals the
    run without EOS cut at the first EOS."""
    cfg = dict(max_new_tokens=16, block_size=8, steps_per_block=8, confidence_threshold=0.9)
    free = generate_mask_diffusion(model, PROMPTS, MaskDiffusionConfig(**cfg))
    eos = free.tokens[0][4]
    out = generate_mask_diffusion(model, PROMPTS, MaskDiffusionConfig(eos_token_id=eos, **cfg))
    for new, whole in zip(out.tokens, free.tokens):
        expected = whole[: whole.index(eos) + 1] if eos in whole else whole
        assert new == expected
    assert out.denoiser_forwards <= free.denoiser_forwards


@pytest.mark.parametrize("sampler", ["mask_diffusion", "mock_ar", "ar"])
def test_on_commit_streams_and_stops_rows(model, sampler):
    seen: dict[int, list[int]] = {0: [], 1: []}

    def on_commit(row, new, so_far):
        seen[row] += new
        assert so_far == seen[row]
        return row == 0 and len(so_far) >= 3  # row 0 stops after 3 tokens (a "stop sequence")

    generate, config = {
        "mask_diffusion": (
            generate_mask_diffusion,
            MaskDiffusionConfig(max_new_tokens=12, block_size=4, steps_per_block=2),
        ),
        "mock_ar": (generate_mock_ar, MockARConfig(max_new_tokens=12)),
        "ar": (generate_ar, ARConfig(max_new_tokens=12)),
    }[sampler]
    out = generate(model, PROMPTS, config, on_commit=on_commit)
    assert seen == {0: out.tokens[0], 1: out.tokens[1]}
    assert len(out.tokens[1]) == 12
    assert len(out.tokens[0]) == (4 if sampler == "mask_diffusion" else 3)  # whole blocks


def test_ar_statistics(model):
    out = generate_ar(model, PROMPTS, ARConfig(max_new_tokens=5))
    assert out.tokens_per_context_forward == 1.0 and out.context_forwards == 5


@pytest.mark.parametrize(
    "bad, message",
    [
        (dict(confidence_threshold=0.0), "confidence_threshold"),
        (dict(confidence_threshold=1.5), "confidence_threshold"),
        (dict(steps_per_block=0), "steps_per_block"),
        (dict(block_size=-1), "block_size"),
        (dict(max_new_tokens=0), "max_new_tokens"),
    ],
)
def test_bad_knobs(bad, message):
    with pytest.raises(ValueError, match=message):
        MaskDiffusionConfig(**bad)
