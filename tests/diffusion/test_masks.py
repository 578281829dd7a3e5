"""Tests for twotower_train.diffusion.masks (training and block-decode attention patterns)."""

import pytest
import torch

from twotower_train.diffusion.masks import (
    denoiser_block_mask,
    denoiser_mask_dense,
)


def _rows(text):
    return torch.tensor([[c == "#" for c in row.replace(" ", "")] for row in text.split("|")])


# Hand-written L=8, S=4: columns are context keys 0..7 then noisy keys 0..7.
BIDIRECTIONAL = _rows(
    "........ ####....|"
    "........ ####....|"
    "........ ####....|"
    "........ ####....|"
    "####.... ....####|"
    "####.... ....####|"
    "####.... ....####|"
    "####.... ....####"
)
CAUSAL = _rows(
    "........ #.......|"
    "........ ##......|"
    "........ ###.....|"
    "........ ####....|"
    "####.... ....#...|"
    "####.... ....##..|"
    "####.... ....###.|"
    "####.... ....####"
)


def test_dense_mask_hand_checked():
    assert torch.equal(denoiser_mask_dense(8, 4), BIDIRECTIONAL)


def test_dense_mask_causal_in_block_hand_checked():
    assert torch.equal(denoiser_mask_dense(8, 4, causal_in_block=True), CAUSAL)


def test_every_query_has_a_key_and_no_future_context():
    mask = denoiser_mask_dense(32, 8)
    assert mask.any(dim=1).all()
    q = torch.arange(32).unsqueeze(1)
    assert not (mask[:, :32] & (torch.arange(32) >= (q // 8) * 8)).any()


def test_block_mask_is_cached_and_shaped():
    a = denoiser_block_mask(64, 16, device="cpu")
    assert a is denoiser_block_mask(64, 16, device=torch.device("cpu"))
    assert a is not denoiser_block_mask(64, 16, causal_in_block=True, device="cpu")
    assert a.shape[-2:] == (64, 128)


def test_block_size_must_divide():
    with pytest.raises(ValueError, match="must divide"):
        denoiser_mask_dense(10, 4)
