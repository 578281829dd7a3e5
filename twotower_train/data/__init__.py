"""Training-side data loading: tokenizer conventions, indexed datasets and blends.

The preparation side (tokenizing corpora into ``.bin``/``.idx``, training the demo tokenizer,
the offline demo corpus) lives in the top-level ``data_tools`` package; see ``docs/data.md``.
"""

from twotower_train.data.blend import build_blended_datasets, validate_blend
from twotower_train.data.errors import DataError
from twotower_train.data.indexed import open_indexed
from twotower_train.data.tokenizer import (
    SpecialTokenIds,
    check_vocab,
    load_tokenizer,
    special_token_ids,
    special_token_mismatches,
)

__all__ = [
    "DataError",
    "SpecialTokenIds",
    "build_blended_datasets",
    "check_vocab",
    "load_tokenizer",
    "open_indexed",
    "special_token_ids",
    "special_token_mismatches",
    "validate_blend",
]
