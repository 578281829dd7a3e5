"""Denoiser memory savers: the head over masked positions only, activation recompute, compact
Mamba seeds. Each must leave the loss and every gradient unchanged (fp32, tiny model).

Tolerances: the masked head computes the same rows of the same matmuls (differences are a few
ulps, ~1e-7 on O(1) losses and ~1e-9 on O(1e-3) gradients); 1e-6 relative catches any row or
scaling error, which is O(1). Recompute reruns identical CPU kernels, so its results are compared
bit for bit.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from megatron.core import tensor_parallel

from tests.training.test_diffusion_objective import phase
from twotower_train.diffusion import corrupt_blocks, masked_diffusion_loss
from twotower_train.model.backbone import forward_logits, transformer_config
from twotower_train.model.config import Recompute
from twotower_train.model.two_tower import TwoTowerModel
from twotower_train.training.objectives import build_objective

LENGTH, BLOCK = 32, 8


@pytest.fixture
def batch(tiny_cfg):
    gen = torch.Generator().manual_seed(3)
    tokens = torch.randint(4, tiny_cfg.vocab_size, (2, LENGTH), generator=gen)
    return tokens, corrupt_blocks(tokens, BLOCK, tiny_cfg.mask_token_id, generator=gen)


@contextlib.contextmanager
def saved_for_backward():
    """Yields a dict that fills with storage → bytes of every tensor autograd saves inside."""
    saved: dict[int, int] = {}

    def pack(t):
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield saved


def denoiser_grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.denoiser.named_parameters() if p.grad is not None}


def test_masked_head_loss_and_grads_equal_the_full_head(single_process, tiny_cfg, batch):
    tokens, _ = batch
    objective = build_objective("diffusion", {})
    model = objective.build_model(tiny_cfg, None, torch.float32)
    with torch.no_grad():  # a non-trivial time conditioning, so adaLN gradients are non-zero
        for table in model.denoiser.adaln.scale_shift_tables:
            table.add_(torch.randn_like(table) * 0.1)
    out, sums = objective.loss(
        model, {"tokens": tokens}, phase(BLOCK), torch.Generator().manual_seed(9)
    )
    out.loss.backward()
    got = denoiser_grads(model)

    # Reference: logits at every position, Megatron's CE over all of them, then the masked mean.
    model.zero_grad(set_to_none=True)
    c = corrupt_blocks(
        tokens, BLOCK, tiny_cfg.mask_token_id, generator=torch.Generator().manual_seed(9)
    )
    logits = model(tokens, c.noisy, c.t_realised, BLOCK)  # (b, L, V)
    token_nll = tensor_parallel.vocab_parallel_cross_entropy(logits.float(), tokens)
    ref = masked_diffusion_loss(token_nll, c.masked)
    ref.loss.backward()
    expected = denoiser_grads(model)

    torch.testing.assert_close(out.loss, ref.loss, rtol=1e-6, atol=0)
    assert int(out.num_masked) == int(c.masked.sum()) > 0
    correct = ((logits.argmax(-1) == tokens) & c.masked).sum().item()
    assert sums.values["correct"] == correct
    assert got.keys() == expected.keys() and len(got) > 10
    for name in expected:
        scale = expected[name].abs().max().item()
        torch.testing.assert_close(
            got[name], expected[name], rtol=0, atol=1e-6 * scale + 1e-12, msg=name
        )


def test_recompute_saves_less_and_gives_the_same_loss_and_grads(single_process, tiny_cfg, batch):
    tokens, c = batch
    reference = TwoTowerModel(tiny_cfg, transformer_config(tiny_cfg))
    with torch.no_grad():
        for table in reference.denoiser.adaln.scale_shift_tables:
            table.add_(torch.randn_like(table) * 0.1)
    state = reference.state_dict()

    def step(mode):
        model = TwoTowerModel(tiny_cfg, transformer_config(tiny_cfg, recompute=mode))
        model.load_state_dict(state)
        with saved_for_backward() as saved:
            logits = model(tokens, c.noisy, c.t_realised, BLOCK, positions=c.masked)
        loss = tensor_parallel.vocab_parallel_cross_entropy(logits, tokens[c.masked]).mean()
        loss.backward()
        return loss.detach(), denoiser_grads(model), sum(saved.values())

    ref_loss, ref_grads, none_bytes = step(Recompute.NONE)
    results = {mode: step(mode) for mode in (Recompute.SELECTIVE, Recompute.FULL)}
    for mode, (loss, grads, _) in results.items():
        assert loss.item() == ref_loss.item(), mode
        assert grads.keys() == ref_grads.keys()
        for name in grads:
            assert torch.equal(grads[name], ref_grads[name]), (mode, name)
    selective_bytes, full_bytes = (results[m][2] for m in (Recompute.SELECTIVE, Recompute.FULL))
    assert full_bytes < selective_bytes < none_bytes, (none_bytes, selective_bytes, full_bytes)


def test_seeds_are_kept_in_the_parameter_dtype(single_process, tiny_cfg, batch):
    tokens, _ = batch
    model = TwoTowerModel.build(tiny_cfg, params_dtype=torch.bfloat16)
    out = model.context_tower(
        tokens, state_stride=BLOCK, logits="none", boundary_dtype=torch.bfloat16
    )
    exact = model.context_tower(tokens, state_stride=BLOCK, logits="none")
    for layer, bounds in out.boundaries.items():
        assert bounds.ssm.dtype == bounds.conv.dtype == torch.bfloat16
        assert exact.boundaries[layer].ssm.dtype == torch.float32
        torch.testing.assert_close(
            bounds.ssm.float(), exact.boundaries[layer].ssm, rtol=2**-8, atol=1e-6
        )


@pytest.mark.parametrize("name", ["ar", "diffusion"])
def test_objectives_hand_recompute_to_megatron(single_process, tiny_cfg, name):
    model = build_objective(name, {}).build_model(
        tiny_cfg, None, torch.float32, recompute=Recompute.FULL
    )
    assert model.config.recompute_granularity == "full"


def test_stage1_backbone_recompute_through_megatron(single_process, tiny_cfg, batch):
    """The AR backbone uses Megatron's own hybrid-stack recompute: same loss and grads."""
    tokens, _ = batch
    objective = build_objective("ar", {})
    reference = objective.build_model(tiny_cfg, None, torch.float32)
    recomputed = objective.build_model(tiny_cfg, None, torch.float32, recompute=Recompute.FULL)
    recomputed.load_state_dict(reference.state_dict())
    grads, saved = [], []
    for model in (reference, recomputed):
        model.train()
        with saved_for_backward() as storages:
            logits = forward_logits(model, tokens)
        logits.float().logsumexp(-1).mean().backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
        saved.append(sum(storages.values()))
    assert saved[1] < saved[0], saved
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name in grads[0]:
        assert torch.equal(grads[0][name], grads[1][name]), name
