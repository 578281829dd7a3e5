"""``lm-eval`` with the ``twotower`` model registered (``twotower-lm-eval`` / ``python -m
twotower_train.eval``; every ``lm-eval`` argument works)::

    python -m twotower_train.eval run --model twotower \
        --model_args pretrained=runs/demo/stage2/checkpoints --tasks twotower_tiny_mc \
        --include_path tests/eval/tasks
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")  # megatron's jit_fuser would compile on CPU


def main(argv: list[str] | None = None) -> None:
    """``argv`` (default ``sys.argv[1:]``) is lm-eval's command line."""
    from lm_eval.__main__ import cli_evaluate

    import twotower_train  # noqa: F401  (CPU compatibility)
    import twotower_train.eval.harness  # noqa: F401  (registers the model)
    from twotower_train.cli import run_tool

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]  # lm-eval's parser reads sys.argv
    run_tool("twotower-lm-eval", cli_evaluate)
