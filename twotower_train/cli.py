"""What every ``twotower-*`` command does at start-up and with a user error.

    from twotower_train.cli import add_debug_flag, run_tool
    def main(argv=None): run_tool("twotower-convert", _main, argv)   # _main parses argv

A :class:`~twotower_train.errors.UserError` (bad config, path, checkpoint, argument) prints
``twotower-<tool>: error: <message>`` on stderr — on rank 0 only under torchrun — and exits with
code 2. ``--debug`` (:func:`add_debug_flag` for argparse tools, :func:`pop_debug_flag` where
Hydra owns the command line) or ``TWOTOWER_DEBUG=1`` re-raises it with its traceback and shows
the library notices :func:`quiet_startup` hides. Anything else is a bug and propagates unchanged.

:func:`run_tool` calls :func:`quiet_startup` first, so a tool that imports torch / Megatron inside
its body (not at module level) starts without the optional-package notices.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from twotower_train.errors import UserError

DEBUG_ENV = "TWOTOWER_DEBUG"
DEBUG_FLAG = "--debug"

# Notices printed at import time about optional packages that are missing or that a CPU machine
# cannot use (Transformer Engine, apex, CUDA) and one Megatron default we do not choose. They say
# nothing a user can act on; the trainer names missing GPU extras in one line on a GPU host
# instead (backends.missing_gpu_extras).
_KNOWN_WARNINGS = (
    r"Transformer Engine and Apex are not installed",
    r"Apex is not installed",
    r"full scope is deprecated",
    r"Could not determine rank from torch.distributed",  # Megatron code run before init
    # torch.distributed.checkpoint's notices about how Megatron's dist_checkpointing calls it.
    r"torch.distributed is disabled, unavailable or uninitialized",
    r"The argument order of load has been changed",
    r"Please use DTensor instead and we are deprecating ShardedTensor",
    # Megatron at run time: a layer whose TP group has one rank (experts at
    # expert_tensor_parallel=1 under sequence parallelism) and its calls of collectives torch
    # renamed. Neither is ours to change.
    r"`sequence_parallel` is set to `True`, but tensor model parallel size is 1",
    r"`torch.distributed.reduce_scatter_tensor` is deprecated",
    r"`torch.distributed.all_gather_into_tensor` is deprecated",
)
_CPU_ONLY_WARNINGS = (
    # Megatron's CUDA advice under sequence parallelism: meaningless without a GPU.
    r"When using sequence parallelism it is recommended to set the environment variable "
    r"CUDA_DEVICE_MAX_CONNECTIONS",
)
_KNOWN_LOG_LINES = {
    "torch.utils.cpp_extension": "No CUDA runtime is found",
    "megatron.core.dist_checkpointing.strategies.torch": "MCore's async save is deprecated",
}


def is_rank_zero() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def debug_enabled() -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


def enable_debug() -> None:
    """Switch debug on for this process and the processes it starts (torchrun workers)."""
    os.environ[DEBUG_ENV] = "1"


def pop_debug_flag(argv: Sequence[str]) -> list[str]:
    """``argv`` without ``--debug``; seeing it switches debug on (:func:`enable_debug`)."""
    rest = [arg for arg in argv if arg != DEBUG_FLAG]
    if len(rest) != len(argv):
        enable_debug()
    return rest


class _DebugAction(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        enable_debug()
        setattr(namespace, self.dest, True)


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    """Give an argparse tool the common ``--debug`` flag."""
    parser.add_argument(
        DEBUG_FLAG,
        action=_DebugAction,
        nargs=0,
        default=False,
        help=f"show tracebacks and library notices (same as {DEBUG_ENV}=1)",
    )


class _DropLine(logging.Filter):
    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


def quiet_startup() -> None:
    """Hide the known optional-package notices (call before torch / Megatron are imported)."""
    if debug_enabled():
        return
    for pattern in _KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    logging.getLogger("megatron").setLevel(logging.WARNING)  # INFO at import; see below
    for name, text in _KNOWN_LOG_LINES.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropLine) and f.text == text for f in logger.filters):
            logger.addFilter(_DropLine(text))


def quiet_cpu_notices() -> None:
    """On a machine without CUDA, also hide Megatron's GPU-only advice (unless debugging)."""
    if debug_enabled():
        return
    for pattern in _CPU_ONLY_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)


def set_library_verbosity(verbose: bool) -> None:
    """Libraries' INFO lines (Megatron's per-bucket parameter lists and dataset index builds,
    matplotlib's font cache, ...) only if verbose; their warnings and errors always. They go to
    stderr when nothing else (Hydra) configured logging."""
    if not logging.getLogger().handlers:
        logging.basicConfig(format="[%(name)s] %(levelname)s: %(message)s")
    level = logging.INFO if verbose or debug_enabled() else logging.WARNING
    logging.getLogger().setLevel(level)
    logging.getLogger("megatron").setLevel(level)


def fail(tool: str, message: str) -> None:
    """Print the one-line error (rank 0) and exit with code 2."""
    if is_rank_zero():
        print(f"{tool}: error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(2)


INTERRUPTED_EXIT = 130
"""Exit code after Ctrl-C (128 + SIGINT, the shell's convention)."""


def run_tool(tool: str, body: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """:func:`quiet_startup`, then ``body(*args, **kwargs)``; a :class:`UserError` becomes
    :func:`fail` (re-raised with its traceback under ``--debug``), a Ctrl-C that reaches here
    (``KeyboardInterrupt``) one line ``<tool>: interrupted`` and exit code 130."""
    quiet_startup()
    try:
        return body(*args, **kwargs)
    except UserError as error:
        if debug_enabled():
            raise
        fail(tool, " ".join(str(error).split()))  # one line, whatever the message holds
    except KeyboardInterrupt as interrupt:
        if debug_enabled():
            raise
        if is_rank_zero():
            print(
                f"{tool}: {str(interrupt) or 'interrupted (Ctrl-C)'}", file=sys.stderr, flush=True
            )
        raise SystemExit(INTERRUPTED_EXIT) from None
