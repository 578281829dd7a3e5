"""Samplers (docs/inference.md) on the tiny two-tower model: caches, determinism, commit rules."""

from __future__ import annotations

import pytest
import torch

from twotower_train.decoding.samplers import (
    ARConfig,
    MaskDiffusionConfig,
    MockARConfig,
    generate_ar,
    generate_mask_diffusion,
    generate_mock_ar,
)
from twotower_train.decoding.sampling import TokenChoice, choose_tokens
from twotower_train.model.backbone import forward_logits
from twotower_train.model.two_tower import TwoTowerModel

PROMPTS = [[5, 17, 99, 240, 31, 7], [12, 400, 9]]


@pytest.fixture
def model(single_process, tiny_cfg):
    model = TwoTowerModel.build(tiny_cfg).eval()
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():  # a non-trivial time conditioning
        for p in model.denoiser.adaln.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    return model


def test_ar_equals_full_recompute_greedy(model):
    out = generate_ar(model, PROMPTS, ARConfig(max_new_tokens=6))
    for prompt, new in zip(PROMPTS, out.tokens):
        seq = list(prompt)
        for _ in range(6):
            logits = forward_logits(model.backbone, torch.tensor([seq]))
            seq.append(int(logits[0, -1].argmax()))
        assert new == seq[len(prompt) :]


def test_greedy_is_deterministic(model):
    cfg = MaskDiffusionConfig(max_new_tokens=16, block_size=8, steps_per_block=4)
    a = generate_mask_diffusion(model, PROMPTS, cfg)
    b = generate_mask_diffusion(model, PROMPTS, cfg)
    assert a.tokens == b.tokens and len(a.tokens[0]) == 16
    assert all(3 not in row for row in a.tokens)  # the mask token is never emitted


def test_whole_block_commit_is_the_denoisers_argmax(model):
    """γ → 0 commits every position at the first step: each block is the argmax (mask token
    excluded) of one denoiser call at t = 1 on an all-[MASK] block after the prompt and the
    blocks before it — recomputed row by row from fresh prefills, without the sampler."""
    S = 8
    config = MaskDiffusionConfig(
        max_new_tokens=16, block_size=S, steps_per_block=4, confidence_threshold=1e-9
    )
    out = generate_mask_diffusion(model, PROMPTS, config)
    mask = config.mask_token_id
    assert out.denoiser_forwards == 2
    for prompt, new in zip(PROMPTS, out.tokens):
        assert len(new) == 16
        for start in range(0, 16, S):
            cache = model.prefill(torch.tensor([prompt + new[:start]]), logits="none").cache
            logits = model.denoise_block(cache, torch.full((1, S), mask), torch.ones(1))
            logits[..., mask] = float("-inf")
            assert new[start : start + S] == logits[0].argmax(-1).tolist()


def test_mock_ar_equals_fresh_prefills(model):
    """Left-padded batch: token p of every row is the argmax of the unmodulated denoiser on
    token p − 1 after a fresh prefill of the tokens before it (released mock-AR)."""
    mock = generate_mock_ar(model, PROMPTS, MockARConfig(max_new_tokens=5))
    assert mock.tokens_per_forward == 1.0 and mock.denoiser_forwards == 5
    for prompt, new in zip(PROMPTS, mock.tokens):
        seq = prompt + new
        for p in range(len(prompt), len(seq)):
            cache = model.prefill(torch.tensor([seq[: p - 1]]), logits="none").cache
            logits = model.denoise_block(cache, torch.tensor([[seq[p - 1]]]), None)
            assert seq[p] == int(logits[0, -1].argmax())


@pytest.mark.parametrize("threshold, expected_per_forward", [(1e-9, 8.0), (1.0, 2.0)])
def test_confidence_threshold_and_floor(model, threshold, expected_per_forward):
    """γ→0 commits a whole block in one forward; γ=1 leaves only the floor: S/steps per step."""
    cfg = MaskDiffusionConfig(
        max_new_tokens=16, block_size=8, steps_per_block=4, confidence_threshold=threshold
    )
    out = generate_mask_diffusion(model, PROMPTS, cfg)
    assert out.tokens_per_forward == expected_per_forward
    assert all(len(row) == 16 for row in out.tokens)


def test_eos_stops_a_row(model):
    first = generate_mock_ar(model, PROMPTS, MockARConfig(max_new_tokens=4)).tokens[0][0]
    out = generate_mock_ar(model, PROMPTS, MockARConfig(max_new_tokens=4, eos_token_id=first))
    assert out.tokens[0] == [first]


def test_sampling_filters():
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    tokens, conf = choose_tokens(logits, TokenChoice(), forbid=3)
    assert tokens.item() == 2 and 0 < conf.item() < 1
    gen = torch.Generator().manual_seed(0)
    draws = {
        choose_tokens(logits, TokenChoice(temperature=1.0, top_k=2), generator=gen)[0].item()
        for _ in range(50)
    }
    assert draws == {2, 3}
    draws = {
        choose_tokens(logits, TokenChoice(temperature=1.0, top_p=0.5), generator=gen)[0].item()
        for _ in range(50)
    }
    assert draws == {3}  # softmax(3) ≈ 0.64 ≥ 0.5 alone


def test_shared_decoding_modules_import_only_torch():
    """The HF export ships these files verbatim: no project or Megatron imports."""
    import ast
    from pathlib import Path

    import twotower_train.decoding as package

    for name in package.PORTABLE_MODULES:
        tree = ast.parse((Path(package.__file__).parent / f"{name}.py").read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                roots = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                roots = {"." if node.level else node.module.split(".")[0]}
            else:
                continue
            allowed = {
                "torch",
                "math",
                "os",
                "warnings",
                "dataclasses",
                "typing",
                "__future__",
                ".",
            }
            assert roots <= allowed, (
                name,
                roots,
            )
