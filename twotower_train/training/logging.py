"""Training metrics out: a console progress line, ``console.log``, ``metrics.jsonl``, wandb and
TensorBoard.

Only rank 0 writes. Every logged step is one flat dict (``step``, ``phase``, ``block_size``,
``loss``, ``lr``, ``grad_norm``, ``tokens_per_s``, ``mfu``, objective metrics, ``eval/…``),
appended to ``<run dir>/metrics.jsonl`` (what tests and the run report read) and sent to
wandb (``logging.wandb_mode``: ``offline`` by default, ``online``, ``disabled``; see
:func:`wandb_mode` for ``WANDB_MODE``) and to TensorBoard when ``logging.tensorboard`` is set.
Every console line — progress, messages, library warnings — is also appended to
``<run dir>/console.log``.

MFU = achieved model FLOP/s / peak FLOP/s of all devices; model FLOPs per token come from the
objective (``6 × active parameters`` + causal attention, per tower pass), the peak from
``logging.peak_tflops`` or :func:`default_peak_tflops` (a GPU in the data-sheet table). On a CPU
or an unknown GPU without ``logging.peak_tflops`` the record has no ``mfu``.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import os
import socket
from pathlib import Path
from typing import Any

import torch

from twotower_train.training.config import LoggingConfig, Precision, WandbMode

__all__ = [
    "MetricLogger",
    "default_peak_tflops",
    "format_progress",
    "mfu",
    "peak_tflops_by_name",
    "wandb_mode",
]

# Dense peak TFLOP/s per device (vendor data sheets, without sparsity): (bf16, fp32/tf32).
# Matched against torch.cuda.get_device_name(); the longest matching key wins (H100 PCIe/NVL
# before the SXM "H100").
_PEAK_TFLOPS = {
    "B200": (2250.0, 1100.0),
    "H200": (989.0, 494.0),
    "H100 PCIe": (756.0, 378.0),
    "H100 NVL": (835.0, 418.0),
    "H100": (989.0, 494.0),
    "A100": (312.0, 156.0),
    "L40S": (362.0, 183.0),
}


def peak_tflops_by_name(device_name: str, precision: Precision) -> float | None:
    """Data-sheet peak TFLOP/s of a GPU named like ``torch.cuda.get_device_name()``; None if
    the name is not in the table."""
    keys = [key for key in _PEAK_TFLOPS if key in device_name]
    if not keys:
        return None
    bf16, fp32 = _PEAK_TFLOPS[max(keys, key=len)]
    return bf16 if precision is Precision.BF16 else fp32


def default_peak_tflops(precision: Precision) -> float | None:
    """Data-sheet peak TFLOP/s of this process's GPU for ``precision``; None on a CPU or a GPU
    missing from the table (no MFU is shown then: a made-up peak would mislead)."""
    if not torch.cuda.is_available():
        return None
    return peak_tflops_by_name(torch.cuda.get_device_name(), precision)


def mfu(
    tokens_per_s: float, flops_per_token: float, peak_tflops: float | None, devices: int
) -> float | None:
    """Model FLOPs utilisation in [0, 1]; None when the device's peak is unknown."""
    if not peak_tflops:
        return None
    return tokens_per_s * flops_per_token / (peak_tflops * 1e12 * devices)


def wandb_mode(configured: WandbMode) -> str | None:
    """The mode wandb runs in, or None for no wandb: ``disabled`` in the recipe always wins;
    otherwise ``WANDB_MODE`` from the environment, when set, replaces the recipe's offline /
    online (wandb's own switch for a whole machine or CI)."""
    if configured is WandbMode.DISABLED:
        return None
    mode = os.environ.get("WANDB_MODE", "").strip().lower() or configured.value
    return None if mode == "disabled" else mode


def format_progress(record: dict[str, Any], total_steps: int) -> str:
    """One console line for a logged step."""
    parts = [
        f"[{record['phase']} S={record['block_size']}] step {record['step'] + 1}/{total_steps}",
        f"loss {record['loss']:.4f}",
        f"lr {record['lr']:.3e}",
        f"grad-norm {record['grad_norm']:.3f}",
        f"{record['tokens_per_s']:,.0f} tok/s",
    ]
    if record.get("mfu") is not None:  # only where the device's peak is known
        parts.append(f"MFU {100 * record['mfu']:.2f}%")
    if "eval/loss" in record:
        parts.append(f"eval-loss {record['eval/loss']:.4f}")
    return " | ".join(parts)


class MetricLogger:
    """Console + jsonl + wandb + TensorBoard sink (no-op on ranks other than 0)."""

    def __init__(
        self,
        cfg: LoggingConfig,
        run_dir: str | Path,
        run_name: str,
        config: dict[str, Any],
        *,
        rank: int,
        total_steps: int,
    ) -> None:
        self.enabled = rank == 0
        self.total_steps = total_steps
        self.run_dir = Path(run_dir)
        self.history: list[dict[str, Any]] = []
        self._wandb = None
        self._tensorboard = None
        self._log_handler: logging.Handler | None = None
        if not self.enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(self.run_dir / "metrics.jsonl", "a")
        self._console = open(self.run_dir / "console.log", "a")
        started = datetime.datetime.now().isoformat(timespec="seconds")
        self._console.write(f"=== {run_name}: start {started} on {socket.gethostname()} ===\n")
        # Library warnings (Megatron's logger) land in console.log too.
        self._log_handler = logging.StreamHandler(self._console)
        self._log_handler.setLevel(logging.WARNING)
        self._log_handler.setFormatter(logging.Formatter("[%(name)s] %(levelname)s: %(message)s"))
        logging.getLogger().addHandler(self._log_handler)
        mode = wandb_mode(cfg.wandb_mode)
        if mode is not None:
            import wandb

            self._wandb = wandb.init(
                project=cfg.wandb_project,
                name=run_name,
                dir=str(self.run_dir),
                mode=mode,
                config=config,
                resume="allow",
                settings=wandb.Settings(silent=True),  # one line of ours instead of wandb's eight
            )
            where = Path(self._wandb.dir).parent
            self.message(
                f"wandb: {mode} run in {where}"
                + (f" (upload: wandb sync {where})" if mode == "offline" else "")
            )
        if cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tensorboard = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))

    def log(self, record: dict[str, Any], *, console: bool = True) -> None:
        if not self.enabled:
            return
        self.history.append(record)
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        if console:
            self.message(format_progress(record, self.total_steps))
        numbers = {
            k: v
            for k, v in record.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
        }
        if self._wandb is not None:
            self._wandb.log(numbers, step=record["step"])
        if self._tensorboard is not None:
            for key, value in numbers.items():
                if key != "step":
                    self._tensorboard.add_scalar(key, value, record["step"])

    def message(self, text: str) -> None:
        """Print a line (rank 0) and keep it in ``console.log``."""
        if self.enabled:
            print(text, flush=True)
            self._console.write(text + "\n")
            self._console.flush()

    def close(self) -> None:
        if not self.enabled:
            return
        self._jsonl.close()
        logging.getLogger().removeHandler(self._log_handler)
        self._console.close()
        if self._wandb is not None:
            self._wandb.finish()
        if self._tensorboard is not None:
            self._tensorboard.close()
