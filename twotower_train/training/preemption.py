"""Stopping a run cleanly when the scheduler asks: a signal handler that only sets a flag, and
one agreement over all ranks so they stop, and checkpoint, at the same step."""

from __future__ import annotations

import signal

import torch
import torch.distributed as dist

from twotower_train import distributed


class PreemptionSignal:
    """SIGTERM / SIGUSR1 (SLURM ``--signal=B:USR1@120``) ask for a checkpoint and a clean exit.

    The handler only sets a flag; the trainer checks it after each step and all ranks agree
    (max over the world) so they stop at the same step.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}

    def _handle(self, signum, _frame) -> None:
        self.received = signum

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
