"""Round trip text -> .bin/.idx -> tokens, input formats, idempotence and the CLI."""

from __future__ import annotations

import numpy
import pytest

from data_tools.prepare import main, prepare_dataset
from twotower_train.data import load_tokenizer, open_indexed


def _expected(tokenizer_dir, texts):
    tok = load_tokenizer(tokenizer_dir)
    return [tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for t in texts]


def test_round_trip_exact_ids_boundaries_and_eod(tmp_path, tokenizer_dir, corpus):
    path, texts = corpus
    stats = prepare_dataset([path], tmp_path / "out", tokenizer_dir, progress=False)
    ds = open_indexed(tmp_path / "out")
    expected = _expected(tokenizer_dir, texts)
    assert len(ds) == stats.documents == len(texts)
    assert list(ds.document_indices) == list(range(len(texts) + 1))  # one sequence per document
    for i, ids in enumerate(expected):
        numpy.testing.assert_array_equal(ds[i], ids)
        assert ds[i][-1] == 2 and 2 not in ds[i][:-1]  # exactly one EOD, at the end
    assert stats.tokens == sum(map(len, expected))
    assert stats.text_bytes == sum(len(t.encode()) for t in texts)
    assert ds.index.dtype == numpy.uint16 and stats.bin_bytes == 2 * stats.tokens
    assert not stats.reused and stats.tokens_per_second > 0


@pytest.mark.parametrize("fmt", ["parquet", "arrow", "text", "saved"])
def test_formats_match_jsonl(tmp_path, tokenizer_dir, corpus, fmt):
    import datasets

    _, texts = corpus
    texts = texts[:50]
    ds = datasets.Dataset.from_dict({"text": texts})
    if fmt == "parquet":
        src = tmp_path / "c.parquet"
        ds.to_parquet(str(src))
    elif fmt == "arrow":
        ds.save_to_disk(str(tmp_path / "saved"))
        src = next((tmp_path / "saved").glob("*.arrow"))
    elif fmt == "text":
        src = tmp_path / "c.txt"
        src.write_text("\n".join(texts) + "\n")
    else:
        src = tmp_path / "saved"
        ds.save_to_disk(str(src))
    prepare_dataset([src], tmp_path / "out", tokenizer_dir, progress=False)
    out = open_indexed(tmp_path / "out")
    assert [list(out[i]) for i in range(len(out))] == _expected(tokenizer_dir, texts)


def test_idempotent_and_rebuilt_when_input_changes(tmp_path, tokenizer_dir, write_jsonl):
    src = write_jsonl(tmp_path / "c.jsonl", ["one two three", "four five"])
    first = prepare_dataset([src], tmp_path / "out", tokenizer_dir, progress=False)
    mtime = (tmp_path / "out.bin").stat().st_mtime_ns
    again = prepare_dataset([src], tmp_path / "out", tokenizer_dir, progress=False)
    assert again.reused and again.documents == first.documents and again.tokens == first.tokens
    assert (tmp_path / "out.bin").stat().st_mtime_ns == mtime
    write_jsonl(src, ["one two three", "four five", "six"])
    changed = prepare_dataset([src], tmp_path / "out", tokenizer_dir, progress=False)
    assert not changed.reused and changed.documents == 3
    assert len(open_indexed(tmp_path / "out")) == 3  # replaced, not appended


def test_empty_rows_skipped_and_workers_agree(tmp_path, tokenizer_dir, corpus, write_jsonl):
    _, texts = corpus
    src = write_jsonl(tmp_path / "c.jsonl", ["", "  "] + texts[:60])
    one = prepare_dataset([src], tmp_path / "w1", tokenizer_dir, progress=False)
    prepare_dataset([src], tmp_path / "w2", tokenizer_dir, workers=2, batch_size=16, progress=False)
    assert one.skipped_empty == 2 and one.documents == 60
    assert (tmp_path / "w1.bin").read_bytes() == (tmp_path / "w2.bin").read_bytes()
    assert (tmp_path / "w1.idx").read_bytes() == (tmp_path / "w2.idx").read_bytes()


def test_cli(tmp_path, tokenizer_dir, capsys, write_jsonl):
    src = write_jsonl(tmp_path / "c.jsonl", ["alpha", "beta gamma"], key="body")
    argv = [
        "--input",
        str(src),
        "--text-key",
        "body",
        "--tokenizer",
        str(tokenizer_dir),
        "--output-prefix",
        str(tmp_path / "cli"),
        "--no-progress",
        "--max-vocab",
        "320",
    ]
    assert main(argv) == 0
    assert "2 documents" in capsys.readouterr().out
    assert main(argv[:3] + ["missing"] + argv[4:]) == 2
    assert "text field 'missing' not found" in capsys.readouterr().err
