"""Write token documents to a Megatron ``IndexedDataset`` (``.bin``/``.idx``) atomically.

Uses megatron-core's :class:`IndexedDatasetBuilder`. Both files are first written under temporary
names next to the target and renamed only after the index is complete, so an interrupted run never
leaves a half-written ``PREFIX.bin``/``PREFIX.idx`` behind.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy
from megatron.core.datasets.indexed_dataset import DType, IndexedDatasetBuilder


@dataclass(frozen=True)
class WrittenIndex:
    """What :func:`write_indexed_dataset` wrote."""

    documents: int
    """Number of documents (one sequence each)."""
    tokens: int
    """Number of token ids written, EOD separators included."""
    bin_bytes: int
    """Size of the ``.bin`` file."""


def token_dtype(vocab_size: int) -> type[numpy.number]:
    """The smallest id dtype megatron-core picks for this vocabulary (uint16 or int32)."""
    return DType.optimal_dtype(vocab_size)


def _remove(paths: Iterable[Path]) -> None:
    for path in paths:
        if path.exists():
            path.unlink()


def write_indexed_dataset(
    documents: Iterable[Iterable[int]], output_prefix: str | Path, vocab_size: int
) -> WrittenIndex:
    """Write each document as one sequence to ``output_prefix.{bin,idx}``.

    Args:
        documents: token-id sequences (EOD already appended), each non-empty.
        output_prefix: path without extension; its folder is created if needed.
        vocab_size: decides the on-disk dtype (ids must be below it).
    """
    prefix = Path(output_prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    suffix = f".tmp-{os.getpid()}"
    bin_tmp = Path(f"{prefix}.bin{suffix}")
    idx_tmp = Path(f"{prefix}.idx{suffix}")
    dtype = token_dtype(vocab_size)
    count = tokens = 0
    try:
        builder = IndexedDatasetBuilder(str(bin_tmp), dtype=dtype)
        for ids in documents:
            array = numpy.asarray(ids, dtype=numpy.int64)
            if array.size == 0:
                raise ValueError("empty document passed to write_indexed_dataset")
            if array.max() >= vocab_size or array.min() < 0:
                raise ValueError(f"token id outside [0, {vocab_size}) in document {count}")
            builder.add_document(array, [int(array.size)])
            count += 1
            tokens += int(array.size)
        builder.finalize(str(idx_tmp))
        os.replace(bin_tmp, f"{prefix}.bin")
        os.replace(idx_tmp, f"{prefix}.idx")
    finally:
        _remove((bin_tmp, idx_tmp))
    return WrittenIndex(
        documents=count, tokens=tokens, bin_bytes=Path(f"{prefix}.bin").stat().st_size
    )
