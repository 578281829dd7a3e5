"""The end-of-run report in the run folder: ``summary.json``, ``loss_curve.png`` and the few
lines the trainer prints last.

Everything comes from ``metrics.jsonl`` (the whole run, every start of it) plus what this start
measured itself (wall time, training time, tokens). A step logged twice — recomputed after a
resume from an earlier checkpoint — counts once, with its latest record.

    from twotower_train.training.report import read_metrics, plot_losses
    plot_losses(read_metrics("runs/demo_ar/metrics.jsonl"), "curve.png")
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from twotower_train.atomic_write import atomic_path, write_text

__all__ = ["plot_losses", "read_metrics", "summarize", "write_report"]

# Columns of every record that are not objective metrics (see training/logging.py).
_STEP_COLUMNS = {
    "step",
    "phase",
    "phase_index",
    "block_size",
    "consumed_samples",
    "loss",
    "lr",
    "grad_norm",
    "step_time",
    "tokens_per_s",
    "mfu",
    "eval/loss",
}


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of ``metrics.jsonl`` ordered by step, the latest record of each step."""
    path = Path(path)
    if not path.is_file():
        return []
    by_step: dict[int, dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            by_step[record["step"]] = record
    return [by_step[step] for step in sorted(by_step)]


def _loss_part(summary: dict[str, Any]) -> str:
    if summary["final_step"] is None:  # fewer steps than training.log_interval
        return "no step logged yet (training.log_interval)"
    loss = f"loss {_fmt(summary['final_loss'])}"
    if summary["final_step"] != summary["steps_done"]:
        loss += f" (step {summary['final_step']})"
    return loss


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def summarize(
    records: list[dict[str, Any]],
    *,
    outcome: str,
    steps_done: int,
    stop_step: int,
    steps_this_start: int,
    wall_seconds: float,
    train_seconds: float,
    tokens: int,
) -> dict[str, Any]:
    """The numbers of ``summary.json`` (``final_*`` from the last logged step)."""
    last = records[-1] if records else {}
    evals = [r for r in records if _finite(r.get("eval/loss"))]
    return {
        "outcome": outcome,
        "steps_done": steps_done,
        "final_step": last["step"] + 1 if last else None,
        "stop_step": stop_step,
        "steps_this_start": steps_this_start,
        "final_loss": last.get("loss"),  # of the last logged step (final_step)
        "final_eval_loss": evals[-1]["eval/loss"] if evals else None,
        "final_eval_step": evals[-1]["step"] + 1 if evals else None,
        "final_metrics": {k: v for k, v in last.items() if k not in _STEP_COLUMNS and _finite(v)},
        "tokens_per_s": tokens / train_seconds if train_seconds > 0 else None,
        "train_time_s": train_seconds,
        "wall_time_s": wall_seconds,
    }


def plot_losses(records: list[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """Train loss per logged step, eval loss points, dashed lines at phase changes."""
    # The object-oriented API needs no GUI backend and leaves pyplot's global state alone.
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.0, 4.0), layout="constrained")
    ax = fig.subplots()
    steps = [r["step"] + 1 for r in records if _finite(r.get("loss"))]
    ax.plot(steps, [r["loss"] for r in records if _finite(r.get("loss"))], label="train loss")
    evals = [r for r in records if _finite(r.get("eval/loss"))]
    if evals:
        ax.plot(
            [r["step"] + 1 for r in evals], [r["eval/loss"] for r in evals], "o-", label="eval loss"
        )
    for before, after in zip(records, records[1:]):
        if after.get("phase_index") != before.get("phase_index"):
            ax.axvline(after["step"] + 1, color="grey", linestyle="--", linewidth=0.8)
            ax.annotate(
                f"{after['phase']} (S={after['block_size']})",
                (after["step"] + 1, 1.0),
                xycoords=("data", "axes fraction"),
                va="top",
                fontsize=8,
                rotation=90,
            )
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats / token)")
    ax.set_title(title)
    ax.legend()
    path = Path(path)
    with atomic_path(path, keep_suffix=True) as tmp:  # savefig picks the format by suffix
        fig.savefig(tmp, dpi=100)
    return path


def _fmt(value: Any, spec: str = ".4f") -> str:
    return "-" if value is None else format(value, spec)


def write_report(run_dir: str | Path, summary: dict[str, Any], title: str = "") -> list[str]:
    """Write ``summary.json`` and ``loss_curve.png`` into ``run_dir``; return the console lines."""
    run_dir = Path(run_dir)
    records = read_metrics(run_dir / "metrics.jsonl")
    write_text(run_dir / "summary.json", json.dumps(summary, indent=1) + "\n")
    outputs = ["summary.json"]
    if records:
        plot_losses(records, run_dir / "loss_curve.png", title=title)
        outputs.append("loss_curve.png")
    metrics = ", ".join(f"{k} {v:.4f}" for k, v in summary["final_metrics"].items())
    eval_part = (
        f"eval loss {_fmt(summary['final_eval_loss'])} (step {summary['final_eval_step']})"
        if summary["final_eval_loss"] is not None
        else "no eval"
    )
    return [
        f"summary: {summary['outcome']} at step {summary['steps_done']}/{summary['stop_step']} | "
        + _loss_part(summary)
        + f" | {eval_part}"
        + (f" | {metrics}" if metrics else ""),
        f"summary: {_fmt(summary['tokens_per_s'], ',.0f')} tok/s over "
        f"{summary['steps_this_start']} steps | train {summary['train_time_s']:.0f} s | wall "
        f"{summary['wall_time_s']:.0f} s | {', '.join(str(run_dir / o) for o in outputs)}",
    ]
