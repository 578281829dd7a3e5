"""Blends through megatron-core's builder: validation, proportions, determinism, packing."""

from __future__ import annotations

import numpy
import pytest
import torch

from twotower_train.data import DataError, build_blended_datasets, validate_blend


def _build(prefixes, weights, seed, tokenizer_dir, cache, train=2000, valid=50, seq=32):
    return build_blended_datasets(
        list(zip(prefixes, weights)),
        seq,
        {"train": train, "valid": valid},
        seed=seed,
        tokenizer=tokenizer_dir,
        cache_dir=cache,
    )


def test_items_are_packed_gpt_samples(tmp_path, two_prefixes, tokenizer_dir):
    train, valid = _build(two_prefixes, [1, 1], 0, tokenizer_dir, tmp_path, train=200, valid=20)
    assert len(train) == 200 and len(valid) == 20
    eods = 0
    for i in range(50):
        item = train[i]
        assert item["tokens"].dtype == torch.long and item["tokens"].shape == (32,)
        assert item["labels"].shape == (32,)
        torch.testing.assert_close(item["labels"][:-1], item["tokens"][1:])  # next-token labels
        assert int(item["tokens"].max()) < 320
        eods += int((item["tokens"] == 2).sum())
    assert eods > 0  # documents are packed with the EOD separator between them


def test_blend_proportions(tmp_path, two_prefixes, tokenizer_dir):
    train, _ = _build(two_prefixes, [0.25, 0.75], 7, tokenizer_dir, tmp_path, train=4000)
    share = numpy.bincount(train.dataset_index[: len(train)], minlength=2) / len(train)
    assert abs(share[0] - 0.25) < 0.01 and abs(share[1] - 0.75) < 0.01
    # megatron interleaves datasets greedily (not at random), so any window is already on target
    drawn = numpy.bincount([int(train[i]["dataset_id"]) for i in range(1000, 1400)], minlength=2)
    assert abs(drawn[0] / drawn.sum() - 0.25) < 0.01


def test_deterministic_by_seed(tmp_path, two_prefixes, tokenizer_dir):
    def first_tokens(seed, cache):
        train, valid = _build(
            two_prefixes, [0.5, 0.5], seed, tokenizer_dir, tmp_path / cache, train=300
        )
        return torch.stack([train[i]["tokens"] for i in range(40)]), valid[0]["tokens"]

    a, va = first_tokens(3, "x")
    b, vb = first_tokens(3, "y")  # fresh cache: rebuilt from scratch, same samples
    c, _ = first_tokens(4, "z")
    assert torch.equal(a, b) and torch.equal(va, vb)
    assert not torch.equal(a, c)


def test_split_without_valid(tmp_path, two_prefixes, tokenizer_dir):
    train, valid = build_blended_datasets(
        [(two_prefixes[0], 1.0)],
        16,
        (100, 0),
        seed=0,
        split="100,0,0",
        tokenizer=tokenizer_dir,
        cache_dir=tmp_path,
    )
    assert len(train) == 100 and valid is None


def test_inside_a_gloo_process_group(tmp_path, two_prefixes, tokenizer_dir):
    import torch.distributed as dist

    if dist.is_initialized():
        pytest.skip("a process group already exists")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        train, _ = _build(two_prefixes, [1, 3], 0, tokenizer_dir, tmp_path, train=100)
        assert len(train) == 100
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize(
    "blend, message",
    [
        ([], "empty"),
        ([("x",)], "not a \\(prefix, weight\\) pair"),
        ([("PFX", 0.0)], "must be a positive"),
        ([("PFX", -1)], "must be a positive"),
        ([("PFX", float("nan"))], "must be a positive"),
        ([("PFX", "heavy")], "not a number"),
        ([("PFX", 1), ("PFX", 2)], "more than once"),
        ([("PFX.bin", 1)], "must not include .bin"),
    ],
)
def test_invalid_blends(two_prefixes, blend, message):
    real = two_prefixes[0]  # "PFX" stands for an existing prefix
    blend = [tuple(v.replace("PFX", real) if isinstance(v, str) else v for v in e) for e in blend]
    with pytest.raises(DataError, match=message):
        validate_blend(blend)


def test_missing_prefix_names_the_fix(tmp_path, tokenizer_dir):
    with pytest.raises(
        DataError,
        match=r"'.*ghost' is missing .*python -m data_tools.prepare .*--output-prefix .*ghost",
    ):
        build_blended_datasets(
            [(str(tmp_path / "ghost"), 1.0)], 32, (10, 1), seed=0, tokenizer=tokenizer_dir
        )


def test_missing_cpp_helpers_is_a_clear_error(monkeypatch):
    import sys

    from twotower_train.data.blend import require_helpers

    require_helpers()  # shipped prebuilt in the wheel
    monkeypatch.setitem(sys.modules, "megatron.core.datasets.helpers_cpp", None)
    with pytest.raises(DataError, match="helpers_cpp.*reinstall the binary wheel"):
        require_helpers()


def test_default_cache_is_beside_the_data(two_prefixes, tokenizer_dir):
    from pathlib import Path

    build_blended_datasets([(two_prefixes[0], 1.0)], 16, (20, 2), seed=0, tokenizer=tokenizer_dir)
    assert any((Path(two_prefixes[0]).parent / "cache").rglob("*.npy"))
