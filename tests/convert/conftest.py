"""Converter-test fixtures: a tiny tokenizer trained locally (special ids pad 0, bos 1, eos 2,
mask 3, like the released model's)."""

from __future__ import annotations

import pytest

TEXTS = ["the river runs to the sea", "hello there, how are you today?"] * 40


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory):
    from data_tools.train_tokenizer import train_tokenizer

    folder = tmp_path_factory.mktemp("tok") / "tokenizer"
    train_tokenizer(TEXTS, 320, folder)
    return folder
