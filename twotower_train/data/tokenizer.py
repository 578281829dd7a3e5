"""Tokenizer loading and the special-token conventions of the released model.

The two-tower model (the released model's conventions; docs/data.md) uses the ids
pad=0, bos=1, eos=2, mask=3. :func:`load_tokenizer` loads any local Hugging Face tokenizer folder
(the demo tokenizer trained by ``data_tools.train_tokenizer`` or a user's Nemotron tokenizer) and
checks those ids, reporting every role that differs. :func:`check_vocab` refuses a tokenizer whose
ids would not fit the model's embedding table.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from twotower_train.data.errors import DataError

ROLES: tuple[str, ...] = ("pad", "bos", "eos", "mask")


@dataclass(frozen=True)
class SpecialTokenIds:
    """Expected ids of the special tokens (the released model's conventions by default)."""

    pad: int = 0
    """Padding id."""
    bos: int = 1
    """Beginning-of-sequence id."""
    eos: int = 2
    """End-of-sequence id; also the end-of-document (EOD) separator written after every document."""
    mask: int = 3
    """The diffusion ``[MASK]`` id."""


def special_token_ids(tokenizer) -> dict[str, int | None]:
    """The tokenizer's id for each role in :data:`ROLES` (None where the role is not set)."""
    return {role: getattr(tokenizer, f"{role}_token_id", None) for role in ROLES}


def special_token_mismatches(tokenizer, expected: SpecialTokenIds = SpecialTokenIds()) -> list[str]:
    """One human-readable line per role whose id is missing or differs from ``expected``."""
    found = special_token_ids(tokenizer)
    problems = []
    for role, want in asdict(expected).items():
        got = found[role]
        if got is None:
            problems.append(f"{role}: no {role}_token is set (expected id {want})")
        elif got != want:
            token = getattr(tokenizer, f"{role}_token")
            problems.append(f"{role}: {token!r} has id {got} (expected {want})")
    return problems


def _apply_overrides(tokenizer, overrides: Mapping[str, str], path: Path) -> None:
    """Assign existing vocabulary tokens to special roles (e.g. ``{"mask": "<SPECIAL_3>"}``)."""
    vocab = tokenizer.get_vocab()
    for role, token in overrides.items():
        if role not in ROLES:
            raise DataError(f"unknown special-token role {role!r}; use one of {', '.join(ROLES)}")
        if token not in vocab:
            raise DataError(
                f"special token {token!r} given for {role!r} is not in the vocabulary of {path}; "
                "name a token that already exists (adding tokens would change the vocab size)"
            )
        tokenizer.add_special_tokens({f"{role}_token": token})


def load_tokenizer(
    path: str | Path,
    expected: SpecialTokenIds | None = SpecialTokenIds(),
    overrides: Mapping[str, str] | None = None,
):
    """Load a local Hugging Face tokenizer folder and check its special tokens.

    Args:
        path: a folder with ``tokenizer.json``/``tokenizer_config.json`` (never a hub name:
            nothing is downloaded).
        expected: the ids each role must have; ``None`` only requires that eos and mask exist.
        overrides: role -> token string for tokenizers whose folder leaves a role unset
            (e.g. a Nemotron tokenizer without a declared mask token).

    Raises:
        DataError: the folder is missing or unreadable, or a special token is missing or has the
            wrong id (every differing role is listed).
    """
    from transformers import AutoTokenizer

    path = Path(path)
    if not path.is_dir():
        raise DataError(
            f"tokenizer folder {path} does not exist; train one with "
            f"`python -m data_tools.train_tokenizer --input FILE --vocab-size 4096 --out {path}` "
            "or point to a local Hugging Face tokenizer folder"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as error:
        raise DataError(f"cannot load a Hugging Face tokenizer from {path}: {error}") from error
    if overrides:
        _apply_overrides(tokenizer, overrides, path)
    if expected is None:
        missing = [r for r in ("eos", "mask") if getattr(tokenizer, f"{r}_token_id", None) is None]
        problems = [f"{r}: no {r}_token is set" for r in missing]
    else:
        problems = special_token_mismatches(tokenizer, expected)
    if problems:
        raise DataError(
            f"tokenizer {path} does not follow the model's special-token conventions:\n  "
            + "\n  ".join(problems)
            + "\nFix the tokenizer folder (tokenizer_config.json / special_tokens_map.json), or "
            "map existing tokens to roles with overrides (CLI: --special-token ROLE=TOKEN)."
        )
    return tokenizer


def check_vocab(tokenizer, model_vocab_size: int) -> int:
    """Check that every id the tokenizer can emit fits the model's vocabulary.

    Returns:
        The tokenizer's vocabulary size (``len(tokenizer)``, added tokens included).

    Raises:
        DataError: the tokenizer has more ids than ``model_vocab_size``.
    """
    size = len(tokenizer)
    if size > model_vocab_size:
        raise DataError(
            f"tokenizer has {size} ids but the model's vocabulary has {model_vocab_size}: ids "
            f">= {model_vocab_size} would index past the embedding table. Use a tokenizer with at "
            f"most {model_vocab_size} ids or raise the model's vocab_size to >= {size}."
        )
    return size
