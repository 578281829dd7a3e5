"""Stopping a run cleanly when the scheduler (or Ctrl-C) asks: a signal handler that only sets a flag, and
one agreement over all ranks so they stop, and checkpoint, at the same step."""

from __future__ import annotations

import os
import signal

import torch
import torch.distributed as dist

from twotower_train import cli, distributed


class PreemptionSignal:
    """SIGTERM / SIGUSR1 (SLURM ``--signal=B:USR1@120``) and Ctrl-C (SIGINT) ask for a
    checkpoint and a clean exit.

    The handler only sets a flag; the trainer checks it after each step and all ranks agree
    (max over the world) so they stop at the same step. A first Ctrl-C prints one line (rank 0)
    saying so; a second one aborts at once (``KeyboardInterrupt``: one line and exit 130 from
    :func:`twotower_train.cli.run_tool`; the last complete checkpoint stays).
    """

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}

    def _handle(self, signum, _frame) -> None:
        if signum == signal.SIGINT:
            if self.received == signal.SIGINT:  # unwinds now: cleanup runs, no new save
                raise KeyboardInterrupt(
                    "aborted (second Ctrl-C); the last complete checkpoint stays"
                )
            if cli.is_rank_zero():
                os.write(
                    2,
                    b"twotower-train: Ctrl-C: finishing this step, then a checkpoint and "
                    b"the report (Ctrl-C again aborts now)\n",
                )
        if self.received is None or signum == signal.SIGINT:
            self.received = signum

    @property
    def interrupted(self) -> bool:
        """The stop came from Ctrl-C (SIGINT), not from a scheduler's signal."""
        return self.received == signal.SIGINT

    def requested(self) -> bool:
        flag = torch.tensor(
            [1.0 if self.received is not None else 0.0], device=distributed.device()
        )
        if dist.is_initialized():
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def restore(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
