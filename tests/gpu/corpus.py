"""A demo-layout data folder built without ``datasets`` (GPU hosts bring only torch, triton and
transformers; ``scripts/gpu_check.sh`` carries no more than it must).

``<root>/tokenizer`` and ``<root>/indexed/{wiki,chitchat}``, so ``recipes/demo.yaml`` and its
blends run on it with ``data.root=<root>``; the texts are the word-list documents of
:mod:`tests.training.fixtures`, tokenized with the trained tokenizer (EOD after each document)
and written with :func:`data_tools.indexed_writer.write_indexed_dataset`.
"""

from __future__ import annotations

from pathlib import Path

from tests.training.fixtures import CHAT_WORDS, WIKI_WORDS, _texts


def write_corpus(root: str | Path, *, documents: int = 300, vocab_size: int = 320) -> Path:
    """Build (or reuse) the folder; returns ``root``."""
    from data_tools.indexed_writer import write_indexed_dataset
    from data_tools.train_tokenizer import train_tokenizer
    from twotower_train.data.tokenizer import load_tokenizer

    root = Path(root)
    sources = {
        "wiki": _texts(WIKI_WORDS, documents, 1),
        "chitchat": _texts(CHAT_WORDS, documents, 2),
    }
    if not (root / "tokenizer").is_dir():
        sample = [t for texts in sources.values() for t in texts[:100]]
        train_tokenizer(sample, vocab_size, root / "tokenizer")
    tokenizer = load_tokenizer(root / "tokenizer")
    for name, texts in sources.items():
        prefix = root / "indexed" / name
        if Path(f"{prefix}.idx").is_file():
            continue
        docs = [
            tokenizer(t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            for t in texts
        ]
        write_indexed_dataset(docs, prefix, len(tokenizer))
    return root
