"""Blended GPT datasets for training: megatron-core's builder over weighted indexed datasets.

A blend is a list of ``(prefix, weight)`` pairs (one per curriculum phase in the recipes). The
datasets are built with megatron-core's :class:`BlendedMegatronDatasetBuilder` and
:class:`GPTDataset`: documents (each ending in EOD) are shuffled and packed back to back into
samples of ``seq_length + 1`` tokens, so a sample may span document boundaries with the EOD id in
between; items are dicts with ``tokens`` and next-token ``labels`` (both ``seq_length`` long),
``loss_mask``, ``position_ids`` and (if asked) ``attention_mask``. Everything is deterministic in
``seed``. Train and valid splits come from the same documents, divided by ``split``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from twotower_train.data.errors import DataError
from twotower_train.data.indexed import open_indexed

Blend = Sequence[tuple[str, float]]


def validate_blend(blend: Blend) -> list[tuple[str, float]]:
    """Check a blend and return it as a list of ``(prefix, float weight)``.

    Raises:
        DataError: empty blend, malformed entry, non-positive or non-finite weight, duplicate
            prefix, or a prefix whose ``.bin``/``.idx`` is missing or damaged.
    """
    if not blend:
        raise DataError("the data blend is empty; list at least one (prefix, weight) pair")
    out: list[tuple[str, float]] = []
    for entry in blend:
        if not isinstance(entry, (tuple, list)) or len(entry) != 2:
            raise DataError(f"blend entry {entry!r} is not a (prefix, weight) pair")
        prefix, weight = str(entry[0]), entry[1]
        try:
            weight = float(weight)
        except (TypeError, ValueError) as error:
            raise DataError(f"weight {weight!r} of {prefix!r} is not a number") from error
        if not math.isfinite(weight) or weight <= 0:
            raise DataError(f"weight {weight} of {prefix!r} must be a positive finite number")
        if prefix.endswith((".bin", ".idx")):
            raise DataError(
                f"blend prefix {prefix!r} must not include .bin/.idx; drop the extension"
            )
        out.append((prefix, weight))
    prefixes = [p for p, _ in out]
    duplicates = sorted({p for p in prefixes if prefixes.count(p) > 1})
    if duplicates:
        raise DataError(f"blend lists {', '.join(duplicates)} more than once; merge their weights")
    for prefix in prefixes:
        open_indexed(prefix)
    return out


def _split_sizes(num_samples: Mapping[str, int] | Sequence[int]) -> list[int | None]:
    if isinstance(num_samples, Mapping):
        unknown = set(num_samples) - {"train", "valid", "test"}
        if unknown:
            raise DataError(f"num_samples keys must be train/valid/test, got {sorted(unknown)}")
        sizes = [
            num_samples.get("train", 0),
            num_samples.get("valid", 0),
            num_samples.get("test", 0),
        ]
    else:
        sizes = list(num_samples) + [0] * (3 - len(num_samples))
        if len(sizes) != 3:
            raise DataError(f"num_samples must be (train, valid[, test]), got {num_samples!r}")
    for value in sizes:
        if not isinstance(value, int) or value < 0:
            raise DataError(f"num_samples must be non-negative ints, got {num_samples!r}")
    return sizes


def _megatron_tokenizer(tokenizer):
    if isinstance(tokenizer, (str, Path)):
        from megatron.core.tokenizers import MegatronTokenizer

        from twotower_train.data.tokenizer import load_tokenizer

        load_tokenizer(tokenizer, expected=None)  # clear errors before megatron's asserts
        return MegatronTokenizer.from_pretrained(
            str(tokenizer), metadata_path={"library": "huggingface", "model_type": "gpt"}
        )
    if getattr(tokenizer, "eod", None) is None:
        raise DataError(
            "tokenizer must be a tokenizer folder path or a megatron tokenizer with an eod id "
            "(megatron.core.tokenizers.MegatronTokenizer.from_pretrained)"
        )
    return tokenizer


def require_helpers() -> None:
    """Fail clearly if megatron-core's compiled index helpers are unavailable.

    The 0.19 binary wheels ship ``megatron/core/datasets/helpers_cpp*.so`` prebuilt; only a source
    install on an unusual platform lacks it (and the wheel carries no Makefile to build one).
    """
    try:
        import megatron.core.datasets.helpers_cpp  # noqa: F401
    except ImportError as error:
        raise DataError(
            "megatron-core's compiled dataset helpers (megatron/core/datasets/helpers_cpp) are "
            f"missing or broken ({error}); reinstall the binary wheel "
            "(`pip install --force-reinstall --no-deps 'megatron-core>=0.19,<0.20'`) or build "
            "helpers.cpp in that folder with pybind11: `c++ -O3 -shared -std=c++17 -fPIC "
            "$(python -m pybind11 --includes) helpers.cpp -o helpers_cpp$(python3-config "
            "--extension-suffix)`"
        ) from error


def build_blended_datasets(
    blend: Blend,
    seq_length: int,
    num_samples: Mapping[str, int] | Sequence[int],
    seed: int,
    split: str = "98,2,0",
    *,
    tokenizer,
    cache_dir: str | Path | None = None,
    is_built_on_rank: Callable[[], bool] | None = None,
):
    """Build the train and valid datasets of a weighted blend.

    Args:
        blend: ``(prefix, weight)`` pairs; weights are normalised.
        seq_length: tokens per sample (``tokens`` and ``labels`` are this long).
        num_samples: samples per split, ``{"train": n, "valid": m}`` or ``(n, m)``.
        seed: seeds document shuffling and blending; same seed, same samples.
        split: train,valid,test proportions of each dataset's documents.
        tokenizer: tokenizer folder path, or a megatron tokenizer (its ``eod`` is the separator).
        cache_dir: where megatron caches its index arrays (default: ``cache/`` in the folder of
            the first prefix).
        is_built_on_rank: megatron's per-rank build predicate (default: build on every rank).

    Returns:
        ``(train_ds, valid_ds)``; ``valid_ds`` is None when the valid split is empty.

    Note:
        megatron's builder synchronises ranks through ``torch.distributed`` when it is initialised
        (call on every rank); without a process group it builds locally.
    """
    pairs = validate_blend(blend)
    require_helpers()
    from megatron.core.datasets.blended_megatron_dataset_builder import (
        BlendedMegatronDatasetBuilder,
    )
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

    if cache_dir is None:
        cache_dir = Path(pairs[0][0]).parent / "cache"
    if not isinstance(seq_length, int) or seq_length < 1:
        raise DataError(f"seq_length must be a positive int, got {seq_length!r}")
    sizes = _split_sizes(num_samples)
    try:
        config = GPTDatasetConfig(
            random_seed=seed,
            sequence_length=seq_length,
            blend=([p for p, _ in pairs], [w for _, w in pairs]),
            split=split,
            tokenizer=_megatron_tokenizer(tokenizer),
            reset_position_ids=False,
            reset_attention_mask=False,
            eod_mask_loss=False,
            create_attention_mask=False,
            path_to_cache=str(cache_dir),
        )
    except AssertionError as error:
        raise DataError(f"invalid dataset settings (split={split!r}): {error}") from error
    builder = BlendedMegatronDatasetBuilder(
        GPTDataset, sizes, is_built_on_rank or (lambda: True), config
    )
    train_ds, valid_ds, _ = builder.build()
    return train_ds, valid_ds
