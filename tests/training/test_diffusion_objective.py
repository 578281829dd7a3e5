"""DiffusionObjective: the stage-2 loss on the two-tower model, its config errors and metrics."""

from __future__ import annotations

import re

import pytest
import torch

from twotower_train.errors import ConfigError
from twotower_train.model.config import ParallelConfig
from twotower_train.training.curriculum import Curriculum
from twotower_train.training.objectives import build_objective


def phase(block_size: int, seq_length: int = 32):
    curriculum = Curriculum.from_dict(
        {"phases": [{"name": "p", "block_size": block_size, "blend": [["x", 1.0]], "steps": 4}]},
        global_batch_tokens=2 * seq_length,
        seq_length=seq_length,
    )
    return curriculum.phase_at(0)


@pytest.fixture
def objective_and_model(single_process, tiny_cfg):
    objective = build_objective("diffusion", {})
    model = objective.build_model(tiny_cfg, ParallelConfig(), torch.float32)
    return objective, model


def test_loss_is_mean_nll_over_masked_positions(objective_and_model, tiny_cfg):
    objective, model = objective_and_model
    tokens = torch.randint(
        4, tiny_cfg.vocab_size, (2, 32), generator=torch.Generator().manual_seed(1)
    )
    out, sums = objective.loss(
        model, {"tokens": tokens}, phase(8), torch.Generator().manual_seed(7)
    )
    # Recompute by hand with the same corruption draw.
    from twotower_train.diffusion import corrupt_blocks

    c = corrupt_blocks(
        tokens, 8, tiny_cfg.mask_token_id, generator=torch.Generator().manual_seed(7)
    )
    logits = model(tokens, c.noisy, c.t_realised, 8)
    nll = torch.nn.functional.cross_entropy(
        logits.flatten(0, 1), tokens.flatten(), reduction="none"
    )
    expected = nll.view(2, 32)[c.masked].sum()
    torch.testing.assert_close(out.numerator, expected, rtol=1e-5, atol=1e-5)
    assert int(out.denominator) == int(c.masked.sum()) == int(out.num_masked)
    summary = objective.summarize(sums)
    assert 0.0 <= summary["masked_acc"] <= 1.0 and summary["masked_nll"] > 0
    out.numerator.backward()
    assert all(p.grad is None for p in model.context_tower.parameters())
    assert all(t.grad is not None for t in model.denoiser.adaln.scale_shift_tables)


def test_shifted_loss_scores_each_token_with_the_output_before_it(single_process, tiny_cfg):
    """model.denoiser_shift: token i is scored by the denoiser's output at i − 1, block starts
    (the context tower's to predict) carry no loss — checked against the full logits."""
    cfg = tiny_cfg.replace(denoiser_shift=True)
    objective = build_objective("diffusion", {})
    model = objective.build_model(cfg, ParallelConfig(), torch.float32)
    tokens = torch.randint(4, cfg.vocab_size, (2, 32), generator=torch.Generator().manual_seed(1))
    out, sums = objective.loss(
        model, {"tokens": tokens}, phase(8), torch.Generator().manual_seed(7)
    )
    from twotower_train.diffusion import corrupt_blocks

    c = corrupt_blocks(tokens, 8, cfg.mask_token_id, generator=torch.Generator().manual_seed(7))
    logits = model(tokens, c.noisy, c.t_realised, 8)  # (b, L, V): output i
    nll = torch.nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten(), reduction="none"
    ).view(2, 31)  # nll[:, i − 1] scores token i
    scored = c.masked.clone()
    scored[:, ::8] = False
    assert bool(scored.any()) and bool((c.masked & ~scored).any())
    expected = nll[scored[:, 1:]].sum()
    torch.testing.assert_close(out.numerator, expected, rtol=1e-5, atol=1e-5)
    assert int(out.denominator) == int(scored.sum()) == int(out.num_masked)
    assert objective.summarize(sums)["num_masked"] == int(scored.sum())


def test_shifted_denoiser_needs_blocks_of_two(recipe):
    with pytest.raises(
        ConfigError,
        match=r"curriculum.phases\[0\].block_size=1 with "
        "model.denoiser_shift=true",
    ):
        recipe(
            "+model.denoiser_shift=true", "curriculum.phases.0.block_size=1", name="demo_twotower"
        )


def test_block_size_follows_the_phase(objective_and_model, tiny_cfg):
    objective, model = objective_and_model
    tokens = torch.randint(4, tiny_cfg.vocab_size, (1, 32))
    for block_size in (16, 32):
        out, _ = objective.loss(model, {"tokens": tokens}, phase(block_size), torch.Generator())
        assert torch.isfinite(out.numerator)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"time_sampling": "sometimes"}, "objective.time_sampling='sometimes'"),
        ({"loss_weighting": "max"}, "objective.loss_weighting='max'"),
        ({"eps": 1.5}, "objective.eps=1.5"),
        ({"masking": 1}, "objective: unknown key(s) ['masking']"),
    ],
)
def test_bad_options(options, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        build_objective("diffusion", options)


def test_mask_id_outside_vocab(tiny_cfg):
    objective = build_objective("diffusion", {"mask_token_id": tiny_cfg.vocab_size})
    with pytest.raises(ConfigError, match="objective.mask_token_id=4096 is outside"):
        objective.check_model(tiny_cfg)


def test_mask_id_outside_vocab_fails_recipe_validation(recipe):
    with pytest.raises(ConfigError, match="objective.mask_token_id=512 is outside"):
        recipe("objective=diffusion", "objective.mask_token_id=512", name="demo")


def test_missing_backbone_checkpoint(single_process, tiny_cfg, tmp_path):
    objective = build_objective("diffusion", {"backbone_checkpoint": str(tmp_path / "nope")})
    with pytest.raises(ConfigError, match="does not exist; run stage 1 first"):
        objective.build_model(tiny_cfg, ParallelConfig(), torch.float32)
