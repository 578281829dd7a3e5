"""``twotower-reproduce`` / ``python -m twotower_train.reproduce``: the pipeline's command."""

from __future__ import annotations

from twotower_train.cli import run_tool
from twotower_train.reproduce.config import TOOL
from twotower_train.reproduce.pipeline import pipeline


def main(argv: list[str] | None = None) -> None:
    run_tool(TOOL, pipeline, argv)
