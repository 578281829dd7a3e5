"""The export's card API against the Megatron samplers: greedy tokens identical, for a batch of
left-padded prompts of different lengths; a bf16 load runs and generates."""

from __future__ import annotations

import pytest
import torch

from tests.convert.models import parity_config
from tests.convert.two_tower_models import export, left_padded, load_export, random_two_tower
from tests.inference.placement import EXPORT_TOWERS, cache_devices, tensor_devices
from twotower_train import distributed
from twotower_train.decoding.samplers import (
    ARConfig,
    MaskDiffusionConfig,
    MockARConfig,
    generate_ar,
    generate_mask_diffusion,
    generate_mock_ar,
)

PROMPTS = [[5, 17, 99, 240, 31, 7], [12, 400, 9], [77]]
NEW = 16
MASK, PAD = 3, 0


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    distributed.initialize(seed=0)
    model = random_two_tower(seed=4)
    folder = export(model, tmp_path_factory.mktemp("export") / "hf")
    return model, load_export(folder), folder


def _as_output(tokens: list[list[int]]) -> torch.Tensor:
    """What the card API returns for these new tokens: left-padded prompts + new, pad-filled."""
    ids, _ = left_padded(PROMPTS)
    new = torch.full((len(tokens), max(len(t) for t in tokens)), PAD, dtype=torch.long)
    for row, t in enumerate(tokens):
        new[row, : len(t)] = torch.tensor(t)
    return torch.cat([ids, new], dim=1)


def _eos_inside_first_block(tokens: list[list[int]]) -> int:
    """A token row 0 emits at its third position: with it as EOS, row 0 stops mid-block."""
    return tokens[0][2]


@pytest.mark.parametrize("threshold", [0.5, 0.9])
@pytest.mark.parametrize("block_size, steps", [(4, 4), (4, 2), (8, 8), (8, 4)])
def test_mask_diffusion_token_identical(pair, threshold, block_size, steps):
    model, hf, _ = pair
    options = dict(
        max_new_tokens=NEW,
        block_size=block_size,
        steps_per_block=steps,
        mask_token_id=MASK,
        confidence_threshold=threshold,
    )
    free = generate_mask_diffusion(model, PROMPTS, MaskDiffusionConfig(**options))
    eos = _eos_inside_first_block(free.tokens)
    ours = generate_mask_diffusion(model, PROMPTS, MaskDiffusionConfig(**options, eos_token_id=eos))
    assert len(ours.tokens[0]) <= 3 and len(ours.tokens[1]) > len(ours.tokens[0])
    ids, mask = left_padded(PROMPTS)
    theirs = hf.generate_mask_diffusion(
        ids, **options, temperature=0.0, eos_token_id=eos, attention_mask=mask
    )
    assert theirs.dtype == torch.long
    assert torch.equal(theirs, _as_output(ours.tokens))


def test_mock_ar_and_ar_token_identical(pair):
    model, hf, _ = pair
    ids, mask = left_padded(PROMPTS)
    for megatron, config_cls, card, extra in (
        (generate_mock_ar, MockARConfig, hf.generate_mock_ar, {}),
        (generate_ar, ARConfig, hf.generate_ar, {}),
    ):
        free = megatron(model, PROMPTS, config_cls(max_new_tokens=NEW, **extra))
        eos = _eos_inside_first_block(free.tokens)
        ours = megatron(model, PROMPTS, config_cls(max_new_tokens=NEW, eos_token_id=eos, **extra))
        theirs = card(
            ids, max_new_tokens=NEW, temperature=0.0, eos_token_id=eos, attention_mask=mask
        )
        assert torch.equal(theirs, _as_output(ours.tokens)), card.__name__


def test_ar_equals_transformers_generate(pair):
    """generate_ar (our cached decoding) and transformers' own generate() on forward()."""
    _, hf, _ = pair
    ids = torch.tensor([PROMPTS[0]])
    expected = hf.generate(ids, max_new_tokens=8, do_sample=False)  # EOS: the config's, both
    eos = hf.config.eos_token_id
    assert torch.equal(hf.generate_ar(ids, max_new_tokens=8, eos_token_id=eos), expected)


def test_sampling_is_seeded_and_right_padding_is_refused(pair):
    _, hf, _ = pair
    ids, mask = left_padded(PROMPTS)
    runs = [
        hf.generate_mask_diffusion(
            ids,
            max_new_tokens=8,
            block_size=4,
            temperature=1.0,
            top_k=50,
            attention_mask=mask,
            generator=torch.Generator().manual_seed(1),
        )
        for _ in range(2)
    ]
    assert torch.equal(runs[0], runs[1]) and not (runs[0][:, ids.shape[1] :] == MASK).any()
    with pytest.raises(ValueError, match="padding_side = 'left'"):
        hf.generate_ar(ids, attention_mask=mask.flip(1))


def test_bf16_load_generates(pair):
    _, _, folder = pair
    hf = load_export(folder, torch_dtype=torch.bfloat16)  # the card's call
    assert hf.context_tower.embeddings.weight.dtype == torch.bfloat16
    hf.place_towers_on_devices("cpu", "cpu")
    ids, mask = left_padded(PROMPTS)
    for out in (
        hf.generate_mask_diffusion(
            ids,
            max_new_tokens=8,
            block_size=4,
            steps_per_block=4,
            mask_token_id=MASK,
            temperature=0.1,
            confidence_threshold=0.8,
            eos_token_id=2,
            attention_mask=mask,
        ),
        hf.generate_mock_ar(ids, max_new_tokens=4, temperature=0.0, attention_mask=mask),
        hf.generate_ar(ids, max_new_tokens=4, temperature=0.0, attention_mask=mask),
    ):
        assert out.dtype == torch.long and out.shape[0] == len(PROMPTS)
        assert torch.equal(out[:, : ids.shape[1]], ids)
        assert ((out >= 0) & (out < hf.config.vocab_size)).all()


@pytest.mark.parametrize("context, denoiser", [("meta", "cpu"), ("cpu", "meta")])
def test_place_towers_on_devices_puts_each_tower_on_its_device(pair, context, denoiser):
    _, _, folder = pair
    hf = load_export(folder)  # a fresh copy: weights moved to meta are gone
    assert hf.place_towers_on_devices(context, denoiser) is hf
    assert tensor_devices(hf, EXPORT_TOWERS) == {
        "context": {torch.device(context)},
        "denoiser": {torch.device(denoiser)},
    }
    assert (hf.context_device, hf.denoiser_device) == (
        torch.device(context),
        torch.device(denoiser),
    )


def test_export_caches_live_with_the_tower_that_reads_them(tmp_path):
    """As tests/inference/test_load_and_placement.py checks for the Megatron model, and as
    there without MoE layers (transformers' grouped-mm experts need real data on meta)."""
    distributed.initialize(seed=0)
    model = random_two_tower(parity_config().replace(pattern="M*-"), seed=5)
    hf = load_export(export(model, tmp_path / "hf")).place_towers_on_devices("cpu", "meta")
    cpu, meta = torch.device("cpu"), torch.device("meta")
    ids, mask = left_padded(PROMPTS)
    out = hf.prefill(ids, valid=mask.bool())
    assert cache_devices(out.cache) == {cpu} and out.logits.device == cpu
    moved = out.cache.to(hf.denoiser_device)
    assert cache_devices(moved) == {meta}
    block = torch.full((len(PROMPTS), 4), MASK, device=meta)
    logits = hf.denoise_block(moved, block, torch.ones(len(PROMPTS), device=meta))
    assert logits.device == meta and logits.shape == (len(PROMPTS), 4, hf.config.vocab_size)
    step = hf.advance(out.cache, torch.full((len(PROMPTS), 4), 5), logits="all")
    assert cache_devices(step.cache) == {cpu} and step.logits.device == cpu
    again = step.cache.to(hf.denoiser_device, like=moved)  # the next block's copy: refreshed
    assert cache_devices(again) == {meta} and again.length == step.cache.length
    assert all(again.buffers[i][0] is moved.buffers[i][0] for i in moved.buffers)
