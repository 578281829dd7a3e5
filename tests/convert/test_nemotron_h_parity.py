"""HF NemotronH ↔ Megatron backbone: equal logits and greedy tokens, bit-exact state round trips.

Tolerance: fp32, |Δlogit| ≤ 1e-4 (``LOGIT_ATOL``) on logits of O(1); the two implementations
reduce in different orders (chunked SSD scan, attention, expert accumulation). Measured ~5e-6.
"""

from __future__ import annotations

import pytest
import torch

from tests.convert.models import (
    LOGIT_ATOL,
    greedy,
    hf_from_megatron,
    hf_logits,
    megatron_from_state,
    megatron_logits,
    parity_config,
    random_hf_model,
    random_megatron_model,
)
from twotower_train.convert.nemotron_h import hf_to_megatron_state, megatron_to_hf_state


@pytest.fixture
def cfg():
    return parity_config()


def _tokens(cfg, batch=2, length=37, seed=0):
    # 37: not a multiple of the Mamba chunk size (16), so the padded tail chunk is covered too.
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, cfg.vocab_size, (batch, length), generator=generator)


def test_hf_weights_in_megatron_give_hf_logits(single_process, cfg):
    hf = random_hf_model(cfg)
    megatron = megatron_from_state(cfg, hf_to_megatron_state(hf.state_dict(), cfg))
    tokens = _tokens(cfg)
    expected, got = hf_logits(hf, tokens), megatron_logits(megatron, tokens)
    assert expected.std() > 0.5  # logits of O(1): the absolute tolerance is meaningful
    torch.testing.assert_close(got, expected, rtol=0, atol=LOGIT_ATOL)
    assert torch.equal(got.argmax(-1), expected.argmax(-1))


def test_megatron_weights_in_hf_give_megatron_logits(single_process, cfg):
    megatron = random_megatron_model(cfg, seed=1)
    hf = hf_from_megatron(cfg, megatron)
    tokens = _tokens(cfg, seed=1)
    torch.testing.assert_close(
        hf_logits(hf, tokens), megatron_logits(megatron, tokens), rtol=0, atol=LOGIT_ATOL
    )


def test_greedy_tokens_identical(single_process, cfg):
    hf = random_hf_model(cfg, seed=2)
    megatron = megatron_from_state(cfg, hf_to_megatron_state(hf.state_dict(), cfg))
    prompt = _tokens(cfg, length=12, seed=2)
    hf_out = greedy(lambda t: hf_logits(hf, t), prompt, steps=10)
    megatron_out = greedy(lambda t: megatron_logits(megatron, t), prompt, steps=10)
    assert torch.equal(hf_out, megatron_out)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_hf_megatron_hf_round_trip_is_bit_exact(single_process, cfg, dtype):
    hf = random_hf_model(cfg)
    original = megatron_to_hf_state(  # checkpoint names, per-expert tensors
        hf_to_megatron_state(hf.state_dict(), cfg, naming="te"), cfg
    )
    original = {k: v.to(dtype) for k, v in original.items()}
    for naming in ("te", "local"):
        back = megatron_to_hf_state(hf_to_megatron_state(original, cfg, naming=naming), cfg)
        assert back.keys() == original.keys()
        for name, tensor in original.items():
            assert back[name].dtype == dtype and torch.equal(back[name], tensor), name


def test_megatron_hf_megatron_round_trip_is_bit_exact(single_process, cfg):
    state = {
        k: v
        for k, v in random_megatron_model(cfg).state_dict().items()
        if not k.endswith("_extra_state")
    }
    back = hf_to_megatron_state(megatron_to_hf_state(state, cfg), cfg, naming="local")
    assert back.keys() == state.keys()
    for name, tensor in state.items():
        assert torch.equal(back[name], tensor), name
