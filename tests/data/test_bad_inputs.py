"""Every bad input gives one clear DataError and leaves no partial output behind."""

from __future__ import annotations

import json
import shutil

import pytest

from data_tools.indexed_writer import write_indexed_dataset
from data_tools.prepare import prepare_dataset
from twotower_train.data import (
    DataError,
    build_blended_datasets,
    check_vocab,
    load_tokenizer,
    open_indexed,
)


def _no_outputs(tmp_path):
    return sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(("out", ".")))


def test_missing_file(tmp_path, tokenizer_dir):
    with pytest.raises(DataError, match="input not found: .*nope.jsonl"):
        prepare_dataset([tmp_path / "nope.jsonl"], tmp_path / "out", tokenizer_dir)
    assert _no_outputs(tmp_path) == []


@pytest.mark.parametrize("content", ["", '{"text": ""}\n{"text": "   "}\n'])
def test_empty_dataset(tmp_path, tokenizer_dir, content):
    src = tmp_path / "empty.jsonl"
    src.write_text(content)
    with pytest.raises(DataError, match="no rows|is empty"):
        prepare_dataset([src], tmp_path / "out", tokenizer_dir, progress=False)
    assert _no_outputs(tmp_path) == []


def test_missing_text_key(tmp_path, tokenizer_dir, write_jsonl):
    src = write_jsonl(tmp_path / "c.jsonl", ["a b c"], key="content")
    with pytest.raises(DataError, match=r"text field 'text' not found .*content.* --text-key"):
        prepare_dataset([src], tmp_path / "out", tokenizer_dir, progress=False)
    assert _no_outputs(tmp_path) == []


def _edited_tokenizer(tmp_path, tokenizer_dir, edit):
    out = tmp_path / "tok"
    shutil.copytree(tokenizer_dir, out)
    config = json.loads((out / "tokenizer_config.json").read_text())
    edit(config)
    (out / "tokenizer_config.json").write_text(json.dumps(config))
    return out


def test_tokenizer_without_mask(tmp_path, tokenizer_dir, write_jsonl):
    tok = _edited_tokenizer(tmp_path, tokenizer_dir, lambda c: c.pop("mask_token"))
    src = write_jsonl(tmp_path / "c.jsonl", ["a b c"])
    with pytest.raises(DataError, match="mask: no mask_token is set"):
        prepare_dataset([src], tmp_path / "out", tok, progress=False)
    assert _no_outputs(tmp_path) == []
    # Mapping an existing vocabulary token to the role is the documented fix.
    loaded = load_tokenizer(tok, overrides={"mask": "<mask>"})
    assert loaded.mask_token_id == 3


def test_tokenizer_with_other_ids_lists_every_difference(tmp_path, tokenizer_dir):
    tok = _edited_tokenizer(
        tmp_path, tokenizer_dir, lambda c: c.update(pad_token="</s>", eos_token="<pad>")
    )
    with pytest.raises(DataError) as info:
        load_tokenizer(tok)
    assert "pad: '</s>' has id 2 (expected 0)" in str(info.value)
    assert "eos: '<pad>' has id 0 (expected 2)" in str(info.value)
    with pytest.raises(DataError, match="not in the vocabulary"):
        load_tokenizer(tok, overrides={"mask": "<not-a-token>"})


def test_missing_tokenizer_folder(tmp_path):
    with pytest.raises(DataError, match="does not exist; train one with"):
        load_tokenizer(tmp_path / "nowhere")


def test_vocab_larger_than_model(tmp_path, tokenizer_dir, write_jsonl):
    with pytest.raises(DataError, match="tokenizer has 320 ids but the model's vocabulary has 256"):
        check_vocab(load_tokenizer(tokenizer_dir), 256)
    assert check_vocab(load_tokenizer(tokenizer_dir), 320) == 320
    src = write_jsonl(tmp_path / "c.jsonl", ["a b c"])
    with pytest.raises(DataError, match="model's vocabulary has 300"):
        prepare_dataset([src], tmp_path / "out", tokenizer_dir, max_vocab=300, progress=False)
    assert _no_outputs(tmp_path) == []


def test_interrupted_write_leaves_nothing(tmp_path):
    def docs():
        yield [5, 6, 2]
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_indexed_dataset(docs(), tmp_path / "out", vocab_size=320)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("damage", ["garbage", "truncate", "bin-short"])
def test_corrupted_index(tmp_path, two_prefixes, tokenizer_dir, damage):
    src = two_prefixes[0]
    for ext in (".bin", ".idx"):
        shutil.copy(src + ext, tmp_path / f"bad{ext}")
    prefix = str(tmp_path / "bad")
    if damage == "garbage":
        (tmp_path / "bad.idx").write_bytes(b"not an index at all" * 10)
    elif damage == "truncate":
        data = (tmp_path / "bad.idx").read_bytes()
        (tmp_path / "bad.idx").write_bytes(data[: len(data) // 2])
    else:
        data = (tmp_path / "bad.bin").read_bytes()
        (tmp_path / "bad.bin").write_bytes(data[:-10])
    with pytest.raises(DataError, match=r"bad\.(idx|bin).*data_tools\.prepare"):
        open_indexed(prefix)
    with pytest.raises(DataError, match="bad"):
        build_blended_datasets([(prefix, 1.0)], 32, (10, 2), seed=0, tokenizer=tokenizer_dir)


def test_prepare_rebuilds_over_a_corrupted_index(tmp_path, tokenizer_dir, write_jsonl):
    src = write_jsonl(tmp_path / "c.jsonl", ["one two", "three"])
    first = prepare_dataset([src], tmp_path / "out", tokenizer_dir, progress=False)
    (tmp_path / "out.idx").write_bytes(b"junk")
    again = prepare_dataset([src], tmp_path / "out", tokenizer_dir, progress=False)
    assert not again.reused and again.tokens == first.tokens
    assert len(open_indexed(tmp_path / "out")) == 2
