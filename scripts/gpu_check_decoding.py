"""The decoding rows of ``scripts/gpu_check.py``: batch-1 tokens/s of AR, mask diffusion
(γ = 0.8) and speculative decoding, eager and compiled, on a trained demo model — through
``benchmarks/generation.py`` with ``--device`` (cuda when the host has it, else the CPU: the
same rows run in a CPU dry run).

Standard library only, like the orchestrator. ``--demo-model DIR`` (repeatable) names the
models: a demo run's HF export (``runs/demo/hf``) and/or its stage-2 checkpoint folder; by
default ``runs/demo/hf`` if it is there, else the row is a SKIP saying how to add one.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

DEFAULT = Path("runs/demo/hf")
ROWS = ("AR", "diffusion γ=0.8", "speculative")


def models(given: list[str] | None, repo: Path) -> list[Path]:
    """The demo models to benchmark (absolute), or [] when there is none."""
    if given:
        return [Path(m).resolve() for m in given]
    default = repo / DEFAULT
    return [default] if (default / "config.json").is_file() else []


def command(model: Path, out: Path, cuda: bool, new_tokens: int) -> list[str]:
    """The benchmark run of one model: batch 1, three modes, eager and compiled, median of 3."""
    return [
        sys.executable,
        "benchmarks/generation.py",
        "--model",
        str(model),
        "--out",
        str(out),
        "--device",
        "cuda" if cuda else "cpu",
        "--batch-sizes",
        "1",
        "--gammas",
        "0.8",
        "--max-new-tokens",
        str(new_tokens),
        "--repeats",
        "3",
        "--cost-repeats",
        "10",
        "--compile",
    ]


def summary(result_file: Path) -> str:
    """One table cell from the benchmark's ``result.json``: tok/s and × AR per mode and
    variant, ms per AR step and per denoiser block forward, or why compiling failed."""
    report = json.loads(result_file.read_text())
    parts = []
    for variant in ("eager", "compiled"):
        rows = {r["name"].split(" [")[0]: r for r in report["results"] if r["variant"] == variant}
        if not rows:
            continue
        cells = [
            f"{name} {rows[name]['tokens_per_s_batch1']:,.0f}"
            + ("" if name == "AR" else f" ({rows[name]['speedup_vs_ar_batch1']:.2f}× AR)")
            for name in ROWS
            if name in rows
        ]
        ms = report["forward_ms"][variant]["batch1"]
        parts.append(
            f"{variant}: " + ", ".join(cells) + f" tok/s; AR step {ms['ar_step']:.2f} ms, "
            f"denoiser block {ms['denoiser_block']:.2f} ms"
        )
    if report.get("compile_error"):
        parts.append(f"compile failed: {report['compile_error']}")
    return "; ".join(parts)
