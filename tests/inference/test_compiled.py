"""``DecodeConfig.compile``: the samplers decode through a compiled view of the model, built once
per model, with the same tokens as eager decoding; a process with TorchDynamo disabled gets one
clear error."""

from __future__ import annotations

import pytest
import torch

from twotower_train.decoding.compiled import CompiledDecoding, compiled
from twotower_train.decoding.samplers import (
    ARConfig,
    MaskDiffusionConfig,
    generate_ar,
    generate_mask_diffusion,
)
from twotower_train.model.two_tower import TwoTowerModel

PROMPTS = [[5, 17, 99, 240, 31, 7], [12, 400, 9]]


@pytest.fixture
def model(single_process, tiny_cfg):
    return TwoTowerModel.build(tiny_cfg).eval()


def test_disabled_dynamo_is_one_clear_error(model, monkeypatch):
    monkeypatch.setenv("TORCHDYNAMO_DISABLE", "1")
    with pytest.raises(ValueError, match="DISABLE"):
        generate_ar(model, PROMPTS, ARConfig(max_new_tokens=2, compile=True))


def test_the_view_is_built_once_and_delegates(model, monkeypatch):
    monkeypatch.delenv("TORCHDYNAMO_DISABLE", raising=False)
    with torch._dynamo.config.patch(disable=False):
        view = compiled(model)
    assert isinstance(view, CompiledDecoding) and compiled(model) is view
    assert compiled(view) is view
    assert view.context_device == model.context_device and view.prefill == model.prefill


@pytest.mark.slow
@torch._dynamo.config.patch(disable=False)
def test_compiled_tokens_equal_eager(model, monkeypatch):
    """Real compilation (tens of seconds on a CPU): same greedy tokens in both modes."""
    monkeypatch.delenv("TORCHDYNAMO_DISABLE")  # torch.compile reads it on every call
    for generate, config in (
        (generate_ar, ARConfig(max_new_tokens=6)),
        (generate_mask_diffusion, MaskDiffusionConfig(max_new_tokens=6, block_size=4)),
    ):
        eager = generate(model, PROMPTS, config).tokens
        config.compile = True
        assert generate(model, PROMPTS, config).tokens == eager
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    assert graphs > 0  # it did compile
    # Static caches: more tokens and other prompt lengths (same batch) reuse the same graphs.
    others = [[3, 1, 4, 1, 5, 9, 2, 6, 5], [2, 7]]
    generate_mask_diffusion(model, others, MaskDiffusionConfig(14, block_size=4, compile=True))
    generate_ar(model, others, ARConfig(max_new_tokens=14, compile=True))
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs
    assert not compiled(model).failures


def test_a_compiler_failure_falls_back_to_eager(model, monkeypatch):
    """A method whose compilation fails warns once and runs eager from then on, same tokens."""
    monkeypatch.delenv("TORCHDYNAMO_DISABLE", raising=False)
    with torch._dynamo.config.patch(disable=False):
        view = compiled(model)

    def broken(*args, **kwargs):
        raise AssertionError("sources must not be empty for symbol s25")  # a dynamo bug seen

    monkeypatch.setitem(view._compiled, "advance", broken)
    monkeypatch.setitem(view._compiled, "denoise_block", model.denoise_block)
    config = MaskDiffusionConfig(max_new_tokens=6, block_size=4)
    eager = generate_mask_diffusion(model, PROMPTS, config).tokens
    with pytest.warns(UserWarning, match="runs eager from now on"):
        assert generate_mask_diffusion(view, PROMPTS, config).tokens == eager
    assert set(view.failures) == {"advance"} and "s25" in view.failures["advance"]
