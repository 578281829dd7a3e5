"""Training metrics out: a console progress line, ``metrics.jsonl``, wandb and TensorBoard.

Only rank 0 writes. Every logged step is one flat dict (``step``, ``phase``, ``block_size``,
``loss``, ``lr``, ``grad_norm``, ``tokens_per_s``, ``mfu``, objective metrics, ``eval/…``),
appended to ``<run dir>/metrics.jsonl`` (what tests and the demo summary read) and sent to
wandb (``logging.wandb_mode``: ``offline`` by default in tests, ``online``, ``disabled``) and
to TensorBoard when ``logging.tensorboard`` is set.

MFU = achieved model FLOP/s / peak FLOP/s of all devices; model FLOPs per token come from the
objective (``6 × active parameters`` + causal attention, per tower pass), the peak from
``logging.peak_tflops`` or :func:`default_peak_tflops`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from twotower_train.training.config import LoggingConfig, Precision, WandbMode

__all__ = ["MetricLogger", "default_peak_tflops", "format_progress", "mfu", "peak_tflops_by_name"]

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
_CPU_NOMINAL_TFLOPS = 0.1  # a couple of AVX2 cores; only makes the CPU MFU column non-empty


def peak_tflops_by_name(device_name: str, precision: Precision) -> float | None:
    """Data-sheet peak TFLOP/s of a GPU named like ``torch.cuda.get_device_name()``; None if
    the name is not in the table."""
    keys = [key for key in _PEAK_TFLOPS if key in device_name]
    if not keys:
        return None
    bf16, fp32 = _PEAK_TFLOPS[max(keys, key=len)]
    return bf16 if precision is Precision.BF16 else fp32


def default_peak_tflops(precision: Precision) -> float:
    """Peak TFLOP/s of this process's device for ``precision`` (nominal 0.1 on CPU, 100 for a
    GPU missing from the table)."""
    if not torch.cuda.is_available():
        return _CPU_NOMINAL_TFLOPS
    peak = peak_tflops_by_name(torch.cuda.get_device_name(), precision)
    return 100.0 if peak is None else peak


def mfu(tokens_per_s: float, flops_per_token: float, peak_tflops: float, devices: int) -> float:
    """Model FLOPs utilisation in [0, 1]."""
    return tokens_per_s * flops_per_token / (peak_tflops * 1e12 * devices)


def format_progress(record: dict[str, Any], total_steps: int) -> str:
    """One console line for a logged step."""
    parts = [
        f"[{record['phase']} S={record['block_size']}] step {record['step'] + 1}/{total_steps}",
        f"loss {record['loss']:.4f}",
        f"lr {record['lr']:.3e}",
        f"grad-norm {record['grad_norm']:.3f}",
        f"{record['tokens_per_s']:,.0f} tok/s",
        f"MFU {100 * record['mfu']:.2f}%",
    ]
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
        if not self.enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(self.run_dir / "metrics.jsonl", "a")
        if cfg.wandb_mode is not WandbMode.DISABLED:
            import wandb

            self._wandb = wandb.init(
                project=cfg.wandb_project,
                name=run_name,
                dir=str(self.run_dir),
                mode=cfg.wandb_mode.value,
                config=config,
                resume="allow",
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
            print(format_progress(record, self.total_steps), flush=True)
        numbers = {
            k: v for k, v in record.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
        }
        if self._wandb is not None:
            self._wandb.log(numbers, step=record["step"])
        if self._tensorboard is not None:
            for key, value in numbers.items():
                if key != "step":
                    self._tensorboard.add_scalar(key, value, record["step"])

    def message(self, text: str) -> None:
        if self.enabled:
            print(text, flush=True)

    def close(self) -> None:
        if not self.enabled:
            return
        self._jsonl.close()
        if self._wandb is not None:
            self._wandb.finish()
        if self._tensorboard is not None:
            self._tensorboard.close()
