"""Preallocated decoding caches (``ContextCache.reserve``) against concatenating ones.

The reference is the same sampler with ``reserve`` disabled, so every advance concatenates the
K/V and every denoiser step concatenates context and block K/V — the layout the caches had
before buffers existed. Every logit each model call returns must agree (fp32: the same
arithmetic on the same values, only where they are stored differs, so 1e-6), on both the
Megatron model and its Hugging Face export, for all four modes — left-padded prompts of
different lengths, a one-token prompt (mock-AR's padding column), speculative rollbacks that
leave holes.
"""

from __future__ import annotations

import pytest
import torch

from tests.convert.two_tower_models import export, load_export, random_two_tower
from twotower_train import distributed
from twotower_train.decoding.cache import ContextCache
from twotower_train.decoding.samplers import (
    ARConfig,
    MaskDiffusionConfig,
    MockARConfig,
    generate_ar,
    generate_mask_diffusion,
    generate_mock_ar,
    left_pad,
)
from twotower_train.decoding.speculative import SpeculativeConfig, generate_speculative

PROMPTS = [[5, 17, 99, 240, 31, 7], [12, 400, 9], [77]]
MODES = {
    "ar": (generate_ar, ARConfig(max_new_tokens=12)),
    "mock_ar": (generate_mock_ar, MockARConfig(max_new_tokens=12)),
    "mask_diffusion": (
        generate_mask_diffusion,
        MaskDiffusionConfig(max_new_tokens=12, block_size=4, confidence_threshold=0.3),
    ),
    "speculative": (generate_speculative, SpeculativeConfig(max_new_tokens=12, block_size=4)),
}


class Recorder:
    """``model`` with every logit tensor its decoding calls return kept in order."""

    def __init__(self, model):
        self.model, self.logits = model, []
        self.context_device, self.denoiser_device = model.context_device, model.denoiser_device
        self.denoiser_shift = model.denoiser_shift

    def _keep(self, out):
        self.logits.append(None if out.logits is None else out.logits.clone())
        return out

    def prefill(self, *args, **kwargs):
        return self._keep(self.model.prefill(*args, **kwargs))

    def advance(self, *args, **kwargs):
        return self._keep(self.model.advance(*args, **kwargs))

    def denoise_block(self, *args, **kwargs):
        logits = self.model.denoise_block(*args, **kwargs)
        self.logits.append(logits.clone())
        return logits


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    distributed.initialize(seed=0)
    model = random_two_tower(seed=4)
    return {
        "megatron": model,
        "export": load_export(export(model, tmp_path_factory.mktemp("export") / "hf")),
    }


class StaticRecorder(Recorder):
    """Decodes on static caches, as a compiled view does (eager here: the cache is under test)."""

    static_caches = True


def _run(model, mode, recorder_type=Recorder):
    generate, config = MODES[mode]
    recorder = recorder_type(model)
    out = generate(recorder, PROMPTS, config)
    return out.tokens, recorder.logits


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("impl", ["megatron", "export"])
def test_buffers_change_nothing(models, impl, mode, monkeypatch):
    model = models[impl]
    tokens, logits = _run(model, mode)
    monkeypatch.setattr(ContextCache, "reserve", lambda self, room, **_: self)
    _assert_same_run((tokens, logits), _run(model, mode), tolerance=1e-6)


def _assert_same_run(ours, theirs, tolerance: float) -> None:
    """Two :func:`_run` results: the same tokens, every logit tensor within ``tolerance``."""
    assert ours[0] == theirs[0]
    assert len(ours[1]) == len(theirs[1])
    for mine, reference in zip(ours[1], theirs[1]):
        if reference is None:
            assert mine is None
        else:
            torch.testing.assert_close(mine, reference, atol=tolerance, rtol=tolerance)


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("impl", ["megatron", "export"])
def test_static_caches_change_nothing(models, impl, mode):
    """Static caches (whole buffers, masks instead of slices, the block's K/V in the scratch)
    give the same logits: the same keys reach the softmax, in another order and next to
    masked ones (fp32 sums reordered: 1e-5)."""
    reference = _run(models[impl], mode)
    _assert_same_run(_run(models[impl], mode, StaticRecorder), reference, tolerance=1e-5)


def test_advance_writes_in_place(models):
    """After ``reserve``, advances write into the same buffers (no per-advance copy of the
    cache) until the room is used up, then grow once."""
    model = models["megatron"]
    tokens, valid = left_pad(PROMPTS, 0)
    cache = model.prefill(tokens, valid=valid, logits="none").cache.reserve(4)
    layer = next(iter(cache.keys))
    start = cache.buffers[layer][0].data_ptr()
    for _ in range(4):
        cache = model.advance(cache, torch.tensor([[9], [10], [11]]), logits="none").cache
        assert cache.keys[layer].data_ptr() == start
    assert cache.length == tokens.shape[1] + 4
    grown = model.advance(cache, torch.tensor([[9], [10], [11]]), logits="none").cache
    assert grown.capacity >= grown.length == cache.length + 1
    assert grown.keys[layer].data_ptr() != start
    torch.testing.assert_close(grown.keys[layer][:, :, : cache.length], cache.keys[layer])


@pytest.mark.parametrize("static", [False, True])
def test_a_copy_elsewhere_is_refreshed_with_the_new_positions_only(models, static):
    """Towers apart: ``to(device, like=previous copy)`` copies only what the cache gained since
    (two CPU devices do not exist, so the copy step runs here on the CPU itself)."""
    model = models["megatron"]
    tokens, valid = left_pad(PROMPTS, 0)
    prefill = model.prefill(tokens, valid=valid, logits="none").cache
    cache = prefill.reserve(8, static=static, scratch=4 if static else 0)
    like = (
        cache._like(torch.clone)
        if static
        else ContextCache(
            keys=dict(cache.keys), values=dict(cache.values), mamba=cache.mamba, valid=cache.valid
        ).reserve(8)
    )
    grown = model.advance(cache, torch.tensor([[9, 8], [10, 7], [11, 6]]), logits="none").cache
    layer = next(iter(grown.keys))
    old = grown.keys[layer][:, :, 0].clone()
    grown.keys[layer][:, :, 0] = 123.0  # an old position changed at the source: not copied
    assert grown._grew_from(like)
    copy = grown._copy_into(like)
    assert copy.buffers[layer][0] is like.buffers[layer][0]  # the same buffers, refreshed
    assert copy.length == grown.length == prefill.length + 2 and copy.static == static
    torch.testing.assert_close(copy.keys[layer][:, :, 0], old)
    grown.keys[layer][:, :, 0] = old
    new = slice(prefill.length, grown.length)
    for i in grown.keys:
        torch.testing.assert_close(copy.keys[i][:, :, new], grown.keys[i][:, :, new])
        torch.testing.assert_close(copy.values[i][:, :, new], grown.values[i][:, :, new])
    torch.testing.assert_close(copy.valid[:, : grown.length], grown.valid[:, : grown.length])
    for i, states in grown.mamba.items():
        torch.testing.assert_close(copy.mamba[i].ssm, states.ssm)
    assert not grown.select(torch.tensor([0, 1]))._grew_from(like)  # rows left: copy it all
