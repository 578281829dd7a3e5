"""The locally trained byte-level BPE tokenizer and its CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from data_tools.train_tokenizer import main, train_tokenizer
from twotower_train.data import DataError, SpecialTokenIds, load_tokenizer, special_token_ids


def test_conventions_and_round_trip(tokenizer_dir):
    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))  # a standard HF folder
    assert special_token_ids(tok) == {"pad": 0, "bos": 1, "eos": 2, "mask": 3}
    assert len(tok) == 320
    text = "the cat sat on a mat, 12 islands!"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text and min(ids) > 3  # no specials added, byte-level lossless
    assert load_tokenizer(tokenizer_dir, expected=SpecialTokenIds()) is not None


def test_train_from_files_and_cli(tmp_path, write_jsonl, make_texts):
    src = write_jsonl(tmp_path / "c.jsonl", make_texts(50, seed=5))
    out = train_tokenizer([Path(src), "an extra document"], 300, tmp_path / "t")
    assert len(load_tokenizer(out)) == 300
    with pytest.raises(DataError, match="already exists"):
        train_tokenizer(["x y"], 300, out)
    with pytest.raises(DataError, match="too small"):
        train_tokenizer(["x y"], 100, tmp_path / "small")
    assert main(["--input", str(src), "--vocab-size", "300", "--out", str(tmp_path / "cli")]) == 0
    assert (tmp_path / "cli" / "tokenizer.json").is_file()
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temp folders left
