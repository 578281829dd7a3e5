"""The denoiser's time conditioning against the released Nemotron-TwoTower's formulas
(DESIGN.md §2, issue 22), on the tiny fp32 CPU model (pattern M*E-: every layer type).

The reference (tests/model/released_reference.py) is written from the released formulas alone;
it does not import :mod:`twotower_train.model.adaln`. tests/distributed/workers/two_tower_parity.py
compares TP=2 (± SP) and EP=2 with it too.

Tolerances: fp32, the same operations in a possibly different order: ~1e-7 apart on logits of
magnitude ~1; 1e-5 leaves two orders of margin, while moving a modulation to the other side of
a norm or gating with 1 + gate instead of gate moves the logits by ≥ 1e-2 (checked below).
"""

from __future__ import annotations

import functools

import pytest
import torch

from tests.model import released_reference
from twotower_train.model.adaln import AdaLNSingle
from twotower_train.model.config import preset
from twotower_train.model.denoiser import BlockwiseConditioning
from twotower_train.model.two_tower import TwoTowerModel

ATOL = 1e-5
LENGTH, S = 32, 8
released_denoiser = functools.partial(released_reference.released_denoiser, block_size=S)


@pytest.fixture
def model(single_process, tiny_cfg):
    assert set(tiny_cfg.pattern) == {"M", "*", "E", "-"}
    model = TwoTowerModel.build(tiny_cfg)
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():  # away from the identity init: every released parameter matters
        for p in model.denoiser.adaln.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.2)
    return model


@pytest.fixture
def batch(tiny_cfg):
    gen = torch.Generator().manual_seed(0)
    clean = torch.randint(4, tiny_cfg.vocab_size, (2, LENGTH), generator=gen)
    noisy = clean.clone()
    noisy[:, ::3] = tiny_cfg.mask_token_id
    return clean, noisy, torch.rand(2, LENGTH // S, generator=gen)


def test_released_names_and_shapes(model, tiny_cfg):
    d, n = tiny_cfg.hidden_size, len(tiny_cfg.pattern)
    shapes = {k: tuple(p.shape) for k, p in model.denoiser.adaln.named_parameters()}
    expected = {
        "t_embedder.mlp.0.weight": (d, 256),
        "t_embedder.mlp.0.bias": (d,),
        "t_embedder.mlp.2.weight": (d, d),
        "t_embedder.mlp.2.bias": (d,),
        "t_block.1.weight": (3 * d, d),
        "t_block.1.bias": (3 * d,),
    } | {f"scale_shift_tables.{i}": (3, d) for i in range(n)}
    assert shapes == expected


def test_released_init_is_the_identity(single_process, tiny_cfg):
    adaln = TwoTowerModel.build(tiny_cfg).denoiser.adaln
    for table in adaln.scale_shift_tables:
        torch.testing.assert_close(table[:2], torch.zeros_like(table[:2]), rtol=0, atol=0)
        torch.testing.assert_close(table[2], torch.ones_like(table[2]), rtol=0, atol=0)
    assert not adaln.t_block[1].weight.any() and not adaln.t_block[1].bias.any()
    assert adaln.t_embedder.mlp[0].weight.any()  # the embedder itself is random


def test_forward_equals_released_reference(model, batch):
    clean, noisy, t = batch
    with torch.no_grad():
        ours = model(clean, noisy, t, S)
        reference = released_denoiser(model, clean, noisy, t)
        torch.testing.assert_close(ours, reference, rtol=0, atol=ATOL)
        for variant in ("post_norm_everywhere", "one_plus_gate"):
            wrong = released_denoiser(model, clean, noisy, t, variant=variant)
            assert (wrong - reference).abs().max() > 1e-2, variant


def test_gradients_equal_released_reference(model, batch):
    clean, noisy, t = batch
    weights = torch.randn(
        2, LENGTH, model.cfg.vocab_size, generator=torch.Generator().manual_seed(3)
    )
    params = dict(model.denoiser.named_parameters())

    def grads(forward):
        model.zero_grad(set_to_none=True)
        (forward() * weights).sum().backward()
        return {name: p.grad.clone() for name, p in params.items() if p.grad is not None}

    ours = grads(lambda: model(clean, noisy, t, S))
    reference = grads(lambda: released_denoiser(model, clean, noisy, t))
    assert set(ours) == set(reference) == {n for n, p in params.items() if p.requires_grad}
    for name, grad in reference.items():
        scale = grad.abs().max().clamp_min(1e-6)
        assert (ours[name] - grad).abs().max() / scale < 1e-4, name
    assert any(
        n.startswith("adaln.scale_shift_tables.") and g.abs().max() > 0
        for n, g in reference.items()
    )


def test_unmodulated_forward(model, batch):
    """t=None runs every layer as the backbone layer (released mock-AR), whatever the adaLN."""
    clean, noisy, t = batch
    blocks = LENGTH // S
    with torch.no_grad():
        context = model.context_tower(clean, state_stride=S, logits="none")
        ours = model.denoiser(noisy, None, BlockwiseConditioning(context, S, blocks))
        reference = released_denoiser(model, clean, noisy, t, modulate=False)
        torch.testing.assert_close(ours, reference, rtol=0, atol=ATOL)
        assert (ours - model(clean, noisy, t, S)).abs().max() > 1e-2


def test_unmodulated_equals_modulated_at_init(single_process, tiny_cfg, batch):
    model = TwoTowerModel.build(tiny_cfg)
    clean, noisy, t = batch
    with torch.no_grad():
        cache = model.prefill(clean[:, :S]).cache
        plain = model.denoise_block(cache, noisy[:, S : 2 * S], None)
        timed = model.denoise_block(cache, noisy[:, S : 2 * S], t[:, 1])
    torch.testing.assert_close(plain, timed, rtol=0, atol=ATOL)


def test_adaln_size_at_nano_scale():
    cfg = preset("nano_30b_a3b")
    d, n = cfg.hidden_size, len(cfg.pattern)
    assert (d, n) == (2688, 52)
    expected = (256 * d + d) + (d * d + d) + (3 * d * d + 3 * d) + n * 3 * d
    with torch.device("meta"):
        size = sum(p.numel() for p in AdaLNSingle(d, n).parameters())
    assert size == expected == 30_022_272
