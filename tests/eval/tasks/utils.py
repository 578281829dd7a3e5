"""Loaders for the tiny local tasks: the jsonl next to this file, found from any working
directory (lm-eval's ``custom_dataset`` hook; nothing is downloaded)."""

from pathlib import Path

import datasets

HERE = Path(__file__).parent


def _load(name: str, **_metadata) -> datasets.DatasetDict:
    return datasets.DatasetDict({"test": datasets.Dataset.from_json(str(HERE / f"{name}.jsonl"))})


def load_mc(**metadata) -> datasets.DatasetDict:
    return _load("twotower_tiny_mc", **metadata)


def load_gen(**metadata) -> datasets.DatasetDict:
    return _load("twotower_tiny_gen", **metadata)
