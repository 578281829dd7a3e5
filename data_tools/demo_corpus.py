"""The offline demo corpus: packaged real text -> tokenizer -> indexed datasets -> blends.

:func:`prepare_demo_data` writes, under ``out_dir``::

    raw/<source>.jsonl            documents extracted from the packages (corpus_sources.py)
    tokenizer/                    byte-level BPE trained here (pad=0, bos=1, eos=2, mask=3)
    indexed/<source>.{bin,idx}    Megatron indexed datasets, EOD after every document

and returns a :class:`DemoData` with the phase-1 ("broad": chat-heavy, every source by size) and
phase-2 ("higher quality": mostly encyclopedic) blends. A second call reuses everything that is
already there. The tokenizer is trained on a seeded subsample of at most
``tokenizer_sample_docs`` documents per source to keep the whole call well under two minutes on a
2-core machine; every document is still tokenized.

Example (CPU)::

    .venv/bin/python -m data_tools.demo_corpus --out runs/demo_data
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from data_tools.corpus_sources import SOURCES, CorpusSource, package_file
from data_tools.manifest import content_digest
from data_tools.prepare import PrepareStats, prepare_dataset
from data_tools.train_tokenizer import train_tokenizer
from twotower_train.atomic_write import atomic_path
from twotower_train.data.errors import DataError
from twotower_train.data.tokenizer import load_tokenizer

PHASE1_WEIGHTS: dict[str, float] = {"wiki": 0.4, "chitchat": 0.6}
"""Broad phase: both sources, chat-heavy (roughly their token shares)."""
PHASE2_WEIGHTS: dict[str, float] = {"wiki": 0.85, "chitchat": 0.15}
"""Higher-quality phase: mostly edited encyclopedic prose."""


@dataclass
class DemoData:
    """Everything the demo and the tests need from the demo corpus."""

    tokenizer_dir: Path
    """Hugging Face tokenizer folder."""
    datasets: dict[str, str]
    """Dataset name -> indexed-dataset prefix (``PREFIX.bin``/``PREFIX.idx``)."""
    phase1_blend: list[tuple[str, float]]
    """Broad blend, ``(prefix, weight)``."""
    phase2_blend: list[tuple[str, float]]
    """Higher-quality blend, ``(prefix, weight)``."""
    stats: dict[str, PrepareStats] = field(default_factory=dict)
    """Dataset name -> preprocessing statistics."""
    vocab_size: int = 0
    """Tokenizer vocabulary size."""


def _write_jsonl(source: CorpusSource, path: Path) -> Path:
    """Extract a source's documents to ``path`` (atomically; skipped when it exists)."""
    if path.exists():
        return path
    data_file = package_file(source.package, source.relative_path, source.distribution)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as stream:
        for text in source.read(data_file):
            stream.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
    return path


def _tokenizer_sample(raw: dict[str, Path], max_docs: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    texts: list[str] = []
    for name in sorted(raw):
        with open(raw[name], encoding="utf-8") as stream:
            docs = [json.loads(line)["text"] for line in stream]
        if len(docs) > max_docs:
            docs = rng.sample(docs, max_docs)
        texts.extend(docs)
    return texts


def _ensure_tokenizer(
    out: Path,
    raw: dict[str, Path],
    vocab_size: int,
    seed: int,
    max_docs: int,
    extra: dict[str, Path],
) -> Path:
    tok_dir = out / "tokenizer"
    meta = out / "tokenizer.demo.json"
    want: dict = {"vocab_size": vocab_size, "seed": seed, "tokenizer_sample_docs": max_docs}
    if extra:  # extra sources change the tokenizer when their contents change
        want["extra_sources"] = {
            name: content_digest([path]) for name, path in sorted(extra.items())
        }
    if tok_dir.is_dir() and meta.exists() and json.loads(meta.read_text()) == want:
        return tok_dir
    texts = _tokenizer_sample(raw, max_docs, seed)
    train_tokenizer(texts, vocab_size, tok_dir, overwrite=True)
    meta.write_text(json.dumps(want))
    return tok_dir


def prepare_demo_data(
    out_dir: str | Path,
    vocab_size: int = 4096,
    seed: int = 1234,
    *,
    workers: int = 2,
    tokenizer_sample_docs: int = 4000,
    progress: bool = False,
    extra_sources: Mapping[str, str | Path] | None = None,
    phase1_weights: Mapping[str, float] = PHASE1_WEIGHTS,
    phase2_weights: Mapping[str, float] = PHASE2_WEIGHTS,
) -> DemoData:
    """Build (or reuse) the demo corpus under ``out_dir``; see the module docstring.

    ``extra_sources`` (name -> jsonl file with a ``text`` column, e.g. the reasoning task's
    training problems) join the packaged sources: the tokenizer is trained on them too and each
    becomes ``indexed/<name>``; the blend weights may then name them.

    Raises:
        DataError: a corpus package is not installed (the message gives the pip command), an
            extra source is missing or reuses a packaged name, or a weight names no dataset.
    """
    out = Path(out_dir)
    extra = {name: Path(path) for name, path in (extra_sources or {}).items()}
    clash = sorted(set(extra) & {s.name for s in SOURCES})
    if clash:
        raise DataError(f"extra source name(s) {clash} clash with the packaged sources; rename")
    missing = [str(path) for path in extra.values() if not path.is_file()]
    if missing:
        raise DataError(f"extra source file(s) not found: {', '.join(missing)}")
    names = {s.name for s in SOURCES} | set(extra)
    unknown = sorted((set(phase1_weights) | set(phase2_weights)) - names)
    if unknown:
        raise DataError(f"blend weights name {unknown}, which are not among {sorted(names)}")
    raw = {s.name: _write_jsonl(s, out / "raw" / f"{s.name}.jsonl") for s in SOURCES}
    raw.update(extra)
    tok_dir = _ensure_tokenizer(out, raw, vocab_size, seed, tokenizer_sample_docs, extra)
    stats = {
        name: prepare_dataset(
            [path], out / "indexed" / name, tok_dir, workers=workers, progress=progress
        )
        for name, path in raw.items()
    }
    prefixes = {name: s.output_prefix for name, s in stats.items()}
    return DemoData(
        tokenizer_dir=tok_dir,
        datasets=prefixes,
        phase1_blend=[(prefixes[n], w) for n, w in phase1_weights.items()],
        phase2_blend=[(prefixes[n], w) for n, w in phase2_weights.items()],
        stats=stats,
        vocab_size=len(load_tokenizer(tok_dir)),
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Build the demo corpus and print its sizes and throughput."""
    p = argparse.ArgumentParser(
        prog="python -m data_tools.demo_corpus", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--out", default="runs/demo_data", help="output folder")
    p.add_argument("--vocab-size", type=int, default=4096, help="tokenizer vocabulary size")
    p.add_argument(
        "--seed", type=int, default=1234, help="seed of the tokenizer-training subsample"
    )
    p.add_argument("--workers", type=int, default=2, help="tokenizer processes")
    args = p.parse_args(argv)
    start = time.perf_counter()
    try:
        demo = prepare_demo_data(
            args.out, args.vocab_size, args.seed, workers=args.workers, progress=True
        )
    except DataError as error:
        print(f"error: {error}")
        return 2
    for stats in demo.stats.values():
        print(stats.summary())
    print(f"tokenizer: {demo.tokenizer_dir} ({demo.vocab_size} ids)")
    print(f"phase1_blend: {demo.phase1_blend}")
    print(f"phase2_blend: {demo.phase2_blend}")
    print(f"total {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
