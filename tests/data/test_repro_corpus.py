"""The mixed text + reasoning-task corpus: bad settings fail before any work; the full build
(slow) tokenizes the task with single-token numbers and reuses everything on a second call."""

from __future__ import annotations

import json

import pytest

from data_tools.demo_corpus import prepare_demo_data
from data_tools.repro_corpus import prepare_repro_data
from twotower_train.data import DataError


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"extra_sources": {"wiki": "x.jsonl"}}, "clash with the packaged sources"),
        ({"extra_sources": {"task": "nowhere/x.jsonl"}}, "extra source file(s) not found"),
        ({"phase1_weights": {"wiki": 1.0, "task": 1.0}}, "blend weights name ['task']"),
    ],
)
def test_demo_corpus_extra_sources_bad_input_writes_nothing(tmp_path, kwargs, message):
    with pytest.raises(DataError) as error:
        prepare_demo_data(tmp_path / "out", **kwargs)
    assert message in str(error.value)
    assert not (tmp_path / "out").exists()


def test_repro_bad_counts(tmp_path):
    with pytest.raises(DataError, match="must be positive"):
        prepare_repro_data(tmp_path / "out", train_problems=0)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_repro_build_and_reuse(tmp_path):
    from transformers import AutoTokenizer

    from twotower_train.data import build_blended_datasets

    data = prepare_repro_data(tmp_path, train_problems=4000, heldout_problems=50)
    assert set(data.datasets) == {"wiki", "chitchat", "task"}
    assert data.stats["task"].documents == 4000
    rows = [json.loads(line) for line in data.heldout.read_text().splitlines()]
    assert len(rows) == 50
    tok = AutoTokenizer.from_pretrained(str(data.tokenizer_dir))
    # Trained on the mix: every number of the task and the answer cue are single tokens.
    for row in rows:
        for number in {row["result"], *map(int, row["canonical"].replace("-", "+").split("+"))}:
            assert len(tok(f" {number}", add_special_tokens=False)["input_ids"]) == 1
    assert len(tok(" The answer is", add_special_tokens=False)["input_ids"]) <= 3
    again = prepare_repro_data(tmp_path, train_problems=4000, heldout_problems=50)
    assert all(s.reused for s in again.stats.values())
    train, _ = build_blended_datasets(
        data.phase1_blend, 256, (64, 8), seed=0, tokenizer=data.tokenizer_dir
    )
    assert train[0]["tokens"].shape == (256,)
