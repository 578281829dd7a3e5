"""Open and sanity-check Megatron indexed datasets (``PREFIX.bin`` + ``PREFIX.idx``).

megatron-core's :class:`IndexedDataset` reports a damaged index with bare asserts or numpy buffer
errors; :func:`open_indexed` turns those, and a ``.bin`` whose size disagrees with the index, into
a :class:`DataError` that names the prefix and the command that re-creates it.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy

from twotower_train.data.errors import DataError

PREPARE_HINT = (
    "python -m data_tools.prepare --input FILE --tokenizer TOKENIZER_DIR --output-prefix {prefix}"
)


def _recreate(prefix: str) -> str:
    return "create it with `" + PREPARE_HINT.format(prefix=prefix) + "`"


def check_exists(prefix: str | Path) -> None:
    """Raise if ``prefix.bin`` or ``prefix.idx`` is missing."""
    prefix = str(prefix)
    missing = [p for p in (f"{prefix}.bin", f"{prefix}.idx") if not Path(p).is_file()]
    if missing:
        raise DataError(
            f"indexed dataset {prefix!r} is missing {' and '.join(missing)}; {_recreate(prefix)}"
        )


def open_indexed(prefix: str | Path):
    """Open ``prefix`` as a megatron ``IndexedDataset`` after checking it is whole.

    Raises:
        DataError: a file is missing, the index is unreadable, or the ``.bin`` size does not match
            the token counts in the index.
    """
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    prefix = str(prefix)
    check_exists(prefix)
    try:
        dataset = IndexedDataset(prefix)
    except (AssertionError, ValueError, struct.error, OSError, KeyError, IndexError) as error:
        raise DataError(
            f"index file {prefix}.idx is corrupted or not a Megatron index ({error!r}); "
            f"delete {prefix}.bin/.idx and {_recreate(prefix)}"
        ) from error
    lengths = dataset.sequence_lengths
    expected = int(numpy.sum(lengths, dtype=numpy.int64)) * dataset.index.dtype_size
    actual = Path(f"{prefix}.bin").stat().st_size
    if expected != actual or len(lengths) == 0:
        raise DataError(
            f"{prefix}.idx describes {expected} bytes of tokens but {prefix}.bin has {actual} "
            f"(or the index is empty); the pair is damaged - delete both and {_recreate(prefix)}"
        )
    return dataset
