"""Tokenize local text datasets into Megatron indexed datasets (``.bin``/``.idx``).

Reads Hugging Face ``datasets`` sources from local files (jsonl, parquet, arrow, text or a saved
dataset folder), tokenizes the text column with a local Hugging Face tokenizer (fast, batched,
``--workers`` processes, with a progress bar), appends the EOD id (the tokenizer's eos) to every
document and writes ``PREFIX.bin``/``PREFIX.idx`` with megatron-core's ``IndexedDatasetBuilder``.
Re-running with the same inputs and tokenizer reuses the finished files (see ``manifest.py``).

Example (CPU)::

    .venv/bin/python -m data_tools.prepare --input corpus.jsonl --text-key text \\
        --tokenizer runs/demo_data/tokenizer --output-prefix runs/data/corpus --workers 2
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from data_tools.indexed_writer import write_indexed_dataset
from data_tools.manifest import fingerprint, read_manifest, remove_manifest, write_manifest
from data_tools.sources import FORMATS, load_source, resolve_sources
from twotower_train.data.errors import DataError
from twotower_train.data.indexed import open_indexed
from twotower_train.data.tokenizer import SpecialTokenIds, check_vocab, load_tokenizer


@dataclass
class PrepareStats:
    """Summary of one prepared indexed dataset."""

    output_prefix: str
    """Prefix of the written ``.bin``/``.idx`` pair."""
    documents: int
    """Documents written (empty texts are skipped)."""
    tokens: int
    """Token ids written, one EOD per document included."""
    text_bytes: int
    """UTF-8 bytes of the text that was tokenized."""
    bin_bytes: int
    """Size of the ``.bin`` file."""
    skipped_empty: int
    """Rows skipped because their text was empty or whitespace."""
    seconds: float
    """Wall time of the run that wrote the files (load + tokenize + write)."""
    reused: bool = False
    """True when this call found up-to-date files and wrote nothing."""

    @property
    def tokens_per_second(self) -> float:
        """Preprocessing throughput of the run that wrote the files."""
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        """One line for logs."""
        state = "reused" if self.reused else "wrote"
        return (
            f"{state} {self.output_prefix}.bin/.idx: {self.documents:,} documents, "
            f"{self.tokens:,} tokens, {self.text_bytes:,} text bytes -> {self.bin_bytes:,} bin "
            f"bytes, {self.skipped_empty:,} empty rows skipped, {self.seconds:.1f} s "
            f"({self.tokens_per_second:,.0f} tokens/s)"
        )


def _tokenize_fn(tokenizer, text_key: str, eod: int):
    def tokenize(batch):
        texts = batch[text_key]
        ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
        return {
            "input_ids": [doc + [eod] for doc in ids],
            "n_bytes": [len(t.encode("utf-8")) for t in texts],
        }

    return tokenize


def _documents(tokenized, batch_size: int, progress: bool):
    """Yield the token lists of a tokenized dataset in order, with a progress bar."""
    from tqdm.auto import tqdm

    rows = tokenized.select_columns(["input_ids"]).iter(batch_size=batch_size)
    with tqdm(total=len(tokenized), desc="write .bin", unit="doc", disable=not progress) as bar:
        for batch in rows:
            yield from batch["input_ids"]
            bar.update(len(batch["input_ids"]))


def _reusable(prefix: str, digest: str) -> PrepareStats | None:
    manifest = read_manifest(prefix)
    if manifest is None or manifest.get("fingerprint") != digest:
        return None
    try:
        open_indexed(prefix)
    except DataError:
        return None
    return PrepareStats(**{**manifest["stats"], "reused": True})


def prepare_dataset(
    inputs: Sequence[str | Path],
    output_prefix: str | Path,
    tokenizer: str | Path,
    *,
    text_key: str = "text",
    fmt: str = "auto",
    workers: int = 1,
    batch_size: int = 1000,
    max_vocab: int | None = None,
    expected_ids: SpecialTokenIds | None = SpecialTokenIds(),
    special_tokens: Mapping[str, str] | None = None,
    text_sample_by: str = "line",
    progress: bool = True,
) -> PrepareStats:
    """Tokenize ``inputs`` into ``output_prefix.{bin,idx}``; see the module docstring.

    Args:
        inputs: local files (or one saved-dataset folder).
        output_prefix: output path without extension.
        tokenizer: local Hugging Face tokenizer folder.
        text_key: the text column.
        fmt: one of ``auto, jsonl, parquet, arrow, text, saved``.
        workers: tokenizer processes.
        batch_size: texts per tokenizer call.
        max_vocab: the model's vocabulary size; a larger tokenizer is refused.
        expected_ids: special-token ids to enforce (None: only require eos and mask to exist).
        special_tokens: role -> existing token, for tokenizers that leave a role unset.
        text_sample_by: for plain text: one document per line, paragraph or document.
        progress: show progress bars.

    Raises:
        DataError: any bad input (missing file, empty dataset, unknown text key, tokenizer without
            the required special tokens, vocabulary larger than ``max_vocab``).
    """
    start = time.perf_counter()
    spec = resolve_sources(inputs, fmt=fmt, text_key=text_key, sample_by=text_sample_by)
    tok = load_tokenizer(tokenizer, expected=expected_ids, overrides=special_tokens)
    vocab_size = len(tok)
    if max_vocab is not None:
        check_vocab(tok, max_vocab)
    prefix = str(output_prefix)
    settings = {
        "text_key": text_key,
        "fmt": spec.fmt,
        "sample_by": text_sample_by,
        "special_tokens": dict(special_tokens or {}),
    }
    digest = fingerprint(spec.paths, Path(tokenizer), settings)
    reused = _reusable(prefix, digest)
    if reused is not None:
        return reused

    import datasets

    if not progress:
        datasets.disable_progress_bars()
    Path(prefix).parent.mkdir(parents=True, exist_ok=True)
    # Intermediate arrow files live in a private folder removed at the end: the manifest, not
    # datasets' cache, decides reuse, and nothing piles up in ~/.cache between runs.
    with tempfile.TemporaryDirectory(prefix=".prepare-", dir=Path(prefix).parent) as work:
        ds = load_source(spec, cache_dir=work)
        total_rows = len(ds)
        ds = ds.filter(
            lambda batch: [bool(t and t.strip()) for t in batch[text_key]],
            batched=True,
            batch_size=batch_size,
            cache_file_name=os.path.join(work, "nonempty.arrow"),
            load_from_cache_file=False,
            desc="drop empty texts",
        )
        if len(ds) == 0:
            raise DataError(
                f"every {text_key!r} value in {', '.join(map(str, spec.paths))} is empty"
            )
        if workers > 1:
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        tokenized = ds.map(
            _tokenize_fn(tok, text_key, tok.eos_token_id),
            batched=True,
            batch_size=batch_size,
            num_proc=workers if workers > 1 else None,
            remove_columns=ds.column_names,
            cache_file_name=os.path.join(work, "tokenized.arrow"),
            load_from_cache_file=False,
            desc="tokenize",
        )
        text_bytes = int(sum(tokenized["n_bytes"]))

        remove_manifest(prefix)
        written = write_indexed_dataset(
            _documents(tokenized, batch_size, progress), prefix, vocab_size
        )
        documents_kept = len(ds)
        del ds, tokenized  # release the memory-mapped files before the folder is removed
    stats = PrepareStats(
        output_prefix=prefix,
        documents=written.documents,
        tokens=written.tokens,
        text_bytes=text_bytes,
        bin_bytes=written.bin_bytes,
        skipped_empty=total_rows - documents_kept,
        seconds=round(time.perf_counter() - start, 3),
    )
    stats_dict = asdict(stats)
    stats_dict.pop("reused")
    write_manifest(prefix, {"fingerprint": digest, "settings": settings, "stats": stats_dict})
    return stats


def _parse_special(values: Sequence[str]) -> dict[str, str]:
    out = {}
    for value in values:
        role, sep, token = value.partition("=")
        if not sep or not token:
            raise DataError(f"--special-token expects ROLE=TOKEN (e.g. mask=<mask>), got {value!r}")
        out[role] = token
    return out


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    p = argparse.ArgumentParser(
        prog="python -m data_tools.prepare", description=__doc__.split("\n\n")[0]
    )
    p.add_argument(
        "--input", nargs="+", required=True, help="local files or a saved-dataset folder"
    )
    p.add_argument(
        "--format", default="auto", choices=FORMATS, help="input format (default: by extension)"
    )
    p.add_argument("--text-key", default="text", help="column with the document text")
    p.add_argument("--tokenizer", required=True, help="local Hugging Face tokenizer folder")
    p.add_argument("--output-prefix", required=True, help="writes PREFIX.bin and PREFIX.idx")
    p.add_argument("--workers", type=int, default=1, help="tokenizer processes")
    p.add_argument("--batch-size", type=int, default=1000, help="texts per tokenizer call")
    p.add_argument(
        "--max-vocab", type=int, default=None, help="model vocab size; refuse larger tokenizers"
    )
    p.add_argument(
        "--special-token",
        action="append",
        default=[],
        metavar="ROLE=TOKEN",
        help="map an existing token to a role (pad, bos, eos, mask); repeatable",
    )
    p.add_argument(
        "--any-special-ids",
        action="store_true",
        help="only require eos and mask to exist, not the ids pad=0 bos=1 eos=2 mask=3",
    )
    p.add_argument(
        "--text-sample-by",
        default="line",
        choices=("line", "paragraph", "document"),
        help="plain text only: what one document is",
    )
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point (``twotower-prepare-data``); returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        stats = prepare_dataset(
            args.input,
            args.output_prefix,
            args.tokenizer,
            text_key=args.text_key,
            fmt=args.format,
            workers=args.workers,
            batch_size=args.batch_size,
            max_vocab=args.max_vocab,
            expected_ids=None if args.any_special_ids else SpecialTokenIds(),
            special_tokens=_parse_special(args.special_token),
            text_sample_by=args.text_sample_by,
            progress=not args.no_progress,
        )
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(stats.summary())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
