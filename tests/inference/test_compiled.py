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
    MockARConfig,
    generate_ar,
    generate_mask_diffusion,
    generate_mock_ar,
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
    # The CUDA-graph mode's path (on a CPU inductor records no CUDA graph): mock-AR keeps each
    # step's cache past the next call of the same graph.
    mock = MockARConfig(max_new_tokens=5)
    eager = generate_mock_ar(model, PROMPTS, mock).tokens
    assert generate_mock_ar(compiled(model, "reduce-overhead"), PROMPTS, mock).tokens == eager


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


def test_cuda_graph_results_are_kept_apart_from_the_buffers(model):
    """``mode="reduce-overhead"`` (CUDA graphs reuse their outputs' memory on the next replay):
    a compiled call's result is cloned before the samplers keep it — except the cache's
    buffers, which the graphs write in place and must stay the caller's."""
    from twotower_train.decoding.compiled import _kept
    from twotower_train.decoding.samplers import left_pad

    tokens, valid = left_pad(PROMPTS, 0)
    prefill = model.prefill(tokens, valid=valid)
    prefill.cache = prefill.cache.reserve(8, static=True, scratch=4)
    out = model.advance(prefill.cache, tokens[:, -1:], position_states=True)
    kept = _kept(out)
    cache = kept.cache
    assert cache.buffers is out.cache.buffers and cache.valid is out.cache.valid
    assert all(cache.keys[i] is out.cache.keys[i] for i in cache.keys)
    fresh = [
        (kept.logits, out.logits),
        (cache.end, out.cache.end),
        *((cache.mamba[i].ssm, out.cache.mamba[i].ssm) for i in cache.mamba),
        *((kept.position_states[i].conv, out.position_states[i].conv) for i in cache.mamba),
    ]
    for copy, original in fresh:
        assert copy.data_ptr() != original.data_ptr() and torch.equal(copy, original)
    assert cache.length == out.cache.length
