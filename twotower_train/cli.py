"""What every ``twotower-*`` command does with a user error: one line, exit code 2.

    from twotower_train.cli import run_tool
    def main(argv=None): run_tool("twotower-convert", _main, argv)

A :class:`~twotower_train.errors.UserError` (bad config, path, checkpoint, argument) prints
``twotower-<tool>: error: <message>`` on stderr — on rank 0 only under torchrun — and exits with
code 2; ``TWOTOWER_DEBUG=1`` re-raises it with its traceback. Anything else is a bug and
propagates unchanged.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

from twotower_train.errors import UserError

DEBUG_ENV = "TWOTOWER_DEBUG"


def is_rank_zero() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def fail(tool: str, message: str) -> None:
    """Print the one-line error (rank 0) and exit with code 2."""
    if is_rank_zero():
        print(f"{tool}: error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(2)


def run_tool(tool: str, body: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call ``body(*args, **kwargs)``; a :class:`UserError` becomes :func:`fail`."""
    try:
        return body(*args, **kwargs)
    except UserError as error:
        if os.environ.get(DEBUG_ENV, "") not in ("", "0"):
            raise
        fail(tool, str(error))
