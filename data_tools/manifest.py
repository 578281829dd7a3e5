"""Fingerprints and manifests that make ``prepare`` idempotent.

A finished ``PREFIX.bin``/``PREFIX.idx`` pair gets a ``PREFIX.manifest.json`` holding a SHA-256
fingerprint of everything that determines its bytes (input file contents, tokenizer files and
special-token overrides, text key, format) plus the run's statistics. A later run with the same
fingerprint reuses the files instead of writing them again. The manifest is written last and
removed first, so its presence means the pair is complete.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from twotower_train.atomic_write import write_text

MANIFEST_VERSION = 1
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "added_tokens.json",
)


def manifest_path(output_prefix: str | Path) -> Path:
    """Where the manifest of ``output_prefix`` lives."""
    return Path(f"{output_prefix}.manifest.json")


def _hash_file(digest, path: Path) -> None:
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)


def _files_under(path: Path) -> Iterable[Path]:
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file())
    return [path]


def fingerprint(inputs: Iterable[Path], tokenizer_dir: Path, settings: dict[str, Any]) -> str:
    """SHA-256 over input contents, tokenizer files and the settings that change the output."""
    digest = hashlib.sha256()
    digest.update(json.dumps({"v": MANIFEST_VERSION, **settings}, sort_keys=True).encode())
    for path in inputs:
        for file in _files_under(Path(path)):
            digest.update(file.name.encode())
            _hash_file(digest, file)
    for name in _TOKENIZER_FILES:
        file = Path(tokenizer_dir) / name
        if file.exists():
            digest.update(name.encode())
            _hash_file(digest, file)
    return digest.hexdigest()


def content_digest(paths: Iterable[Path]) -> str:
    """SHA-256 over the names and contents of files (and of the files under folders)."""
    digest = hashlib.sha256()
    for path in paths:
        for file in _files_under(Path(path)):
            digest.update(file.name.encode())
            _hash_file(digest, file)
    return digest.hexdigest()


def read_manifest(output_prefix: str | Path) -> dict[str, Any] | None:
    """The stored manifest, or None if absent or unreadable."""
    path = manifest_path(output_prefix)
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def write_manifest(output_prefix: str | Path, content: dict[str, Any]) -> None:
    """Write the manifest atomically (temporary name, then rename)."""
    path = manifest_path(output_prefix)
    write_text(path, json.dumps(content, indent=2, sort_keys=True))


def remove_manifest(output_prefix: str | Path) -> None:
    """Invalidate the outputs before they are rewritten."""
    manifest_path(output_prefix).unlink(missing_ok=True)
