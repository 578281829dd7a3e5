"""The docs point only at files the repository has: every relative Markdown link in README.md
and docs/ resolves, and every ``docs/<page>.md`` named in text, code or pyproject exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
DOC_MENTION = re.compile(r"\bdocs/[\w./-]+\.md\b")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_resolve(page):
    broken = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+://|mailto:|#", target):
            continue
        path = target.split("#", 1)[0]
        if path and not (page.parent / path).exists():
            broken.append(target)
    assert not broken, f"{page.relative_to(REPO)}: {broken}"


def test_named_doc_pages_exist():
    sources = [
        *PAGES,
        REPO / "pyproject.toml",
        *REPO.glob("recipes/**/*.yaml"),
        *REPO.glob("twotower_train/**/*.py"),
        *REPO.glob("data_tools/**/*.py"),
        *REPO.glob("launch/*"),
        *REPO.glob("scripts/*"),
    ]
    missing = sorted(
        {
            f"{src.relative_to(REPO)}: {name}"
            for src in sources
            for name in DOC_MENTION.findall(src.read_text())
            if not (REPO / name).exists()
        }
    )
    assert not missing, missing


def test_readme_lists_every_docs_page():
    readme = (REPO / "README.md").read_text()
    unlisted = [p.name for p in PAGES[1:] if f"(docs/{p.name})" not in readme]
    assert not unlisted, unlisted
