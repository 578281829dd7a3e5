"""Shared fixtures for the data tests: a tiny tokenizer and a small corpus (built once)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

WORDS = (
    "the cat sat on a mat while rain fell over old stone towers and rivers ran north to the sea "
    "every morning birds sang songs about distant islands numbers 12 345 and punctuation, too!"
).split()


def _make_texts(count: int, seed: int) -> list[str]:
    """Deterministic pseudo-sentences of varied length."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 60))) for _ in range(count)]


def _write_jsonl(path: Path, texts: list[str], key: str = "text") -> Path:
    """One JSON object per line with the text under ``key``."""
    path.write_text("".join(json.dumps({key: t, "id": i}) + "\n" for i, t in enumerate(texts)))
    return path


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    """A 320-id byte-level BPE tokenizer with pad=0, bos=1, eos=2, mask=3."""
    from data_tools.train_tokenizer import train_tokenizer

    out = tmp_path_factory.mktemp("tok") / "tokenizer"
    return train_tokenizer(_make_texts(300, seed=0), 320, out)


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> tuple[Path, list[str]]:
    """A 200-document jsonl corpus and its texts."""
    texts = _make_texts(200, seed=1)
    path = tmp_path_factory.mktemp("corpus") / "corpus.jsonl"
    return _write_jsonl(path, texts), texts


@pytest.fixture(scope="session")
def two_prefixes(tmp_path_factory, tokenizer_dir) -> tuple[str, str]:
    """Two prepared indexed datasets with distinct texts (for blend tests)."""
    from data_tools.prepare import prepare_dataset

    root = tmp_path_factory.mktemp("indexed")
    prefixes = []
    for name, seed in (("a", 2), ("b", 3)):
        src = _write_jsonl(root / f"{name}.jsonl", _make_texts(400, seed=seed))
        prefixes.append(
            prepare_dataset([src], root / name, tokenizer_dir, progress=False).output_prefix
        )
    return prefixes[0], prefixes[1]


@pytest.fixture
def make_texts():
    """``make_texts(count, seed)`` -> deterministic pseudo-sentences."""
    return _make_texts


@pytest.fixture
def write_jsonl():
    """``write_jsonl(path, texts, key="text")`` -> path of a jsonl file."""
    return _write_jsonl
