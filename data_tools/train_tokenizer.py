"""Train a small byte-level BPE tokenizer locally and save it as a Hugging Face folder.

Built with the ``tokenizers`` library; the special tokens come first so that their ids match the
released model's conventions: ``<pad>``=0, ``<s>``=1 (bos), ``</s>``=2 (eos, also EOD),
``<mask>``=3.
The folder loads with ``AutoTokenizer.from_pretrained(dir)`` and with
``twotower_train.data.load_tokenizer(dir)``. No BOS/EOS is added automatically when encoding;
``data_tools.prepare`` appends EOD itself.

Example (CPU)::

    .venv/bin/python -m data_tools.train_tokenizer --input corpus.jsonl --vocab-size 4096 \\
        --out runs/tokenizer
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from twotower_train.data.errors import DataError

SPECIAL_TOKENS: dict[str, str] = {
    "pad_token": "<pad>",
    "bos_token": "<s>",
    "eos_token": "</s>",
    "mask_token": "<mask>",
}
MIN_VOCAB = len(SPECIAL_TOKENS) + 256 + 1  # specials + the byte alphabet + at least one merge


def _iter_texts(texts_or_files: Iterable[str | Path], text_key: str, fmt: str) -> Iterator[str]:
    """Plain ``str`` items are texts; ``Path`` items are files read with ``data_tools.sources``."""
    from data_tools.sources import load_source, resolve_sources

    for item in texts_or_files:
        if isinstance(item, Path):
            ds = load_source(resolve_sources([item], fmt=fmt, text_key=text_key))
            for batch in ds.select_columns([text_key]).iter(batch_size=1000):
                yield from (t for t in batch[text_key] if t)
        elif isinstance(item, str):
            if item:
                yield item
        else:
            raise DataError(
                f"train_tokenizer takes str texts or Path files, got {type(item).__name__}"
            )


def _build(texts: Iterable[str], vocab_size: int, min_frequency: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def _portable_config(path: Path) -> None:
    """Name the class every transformers version knows (v5 writes its new backend name)."""
    config = json.loads(path.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def train_tokenizer(
    texts_or_files: Iterable[str | Path],
    vocab_size: int,
    out_dir: str | Path,
    *,
    text_key: str = "text",
    fmt: str = "auto",
    min_frequency: int = 2,
    overwrite: bool = False,
) -> Path:
    """Train byte-level BPE on texts and/or files and save a Hugging Face tokenizer folder.

    Args:
        texts_or_files: ``str`` items are documents, ``pathlib.Path`` items are local files in any
            format ``data_tools.prepare`` reads (their ``text_key`` column is used).
        vocab_size: total ids including the 4 special tokens and the 256 byte tokens.
        out_dir: the folder to create; written under a temporary name, then renamed.
        overwrite: replace an existing non-empty ``out_dir``.

    Returns:
        ``out_dir`` as a Path.
    """
    from transformers import PreTrainedTokenizerFast

    out = Path(out_dir)
    if vocab_size < MIN_VOCAB:
        raise DataError(
            f"vocab_size {vocab_size} is too small; byte-level BPE needs >= {MIN_VOCAB}"
        )
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise DataError(f"{out} already exists and is not empty; pass --overwrite to replace it")
    seen = 0

    def counted(texts: Iterable[str]) -> Iterator[str]:
        nonlocal seen
        for text in texts:
            seen += 1
            yield text

    tokenizer = _build(
        counted(_iter_texts(texts_or_files, text_key, fmt)), vocab_size, min_frequency
    )
    if seen == 0:
        raise DataError("no text to train the tokenizer on (all inputs were empty)")
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, **SPECIAL_TOKENS)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        fast.save_pretrained(str(tmp))
        _portable_config(tmp / "tokenizer_config.json")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    p = argparse.ArgumentParser(
        prog="python -m data_tools.train_tokenizer", description=__doc__.split("\n\n")[0]
    )
    p.add_argument(
        "--input", nargs="+", required=True, help="local text files (jsonl, parquet, text, ...)"
    )
    p.add_argument("--text-key", default="text", help="column with the text")
    p.add_argument("--format", default="auto", help="input format (default: by extension)")
    p.add_argument("--vocab-size", type=int, required=True, help="total vocabulary size")
    p.add_argument("--min-frequency", type=int, default=2, help="minimum pair count for a merge")
    p.add_argument("--out", required=True, help="output tokenizer folder")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    args = p.parse_args(argv)
    try:
        out = train_tokenizer(
            [Path(f) for f in args.input],
            args.vocab_size,
            args.out,
            text_key=args.text_key,
            fmt=args.format,
            min_frequency=args.min_frequency,
            overwrite=args.overwrite,
        )
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"saved tokenizer ({args.vocab_size} ids) to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
