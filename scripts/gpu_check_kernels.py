"""The kernel rows of ``scripts/gpu_check.py``: :data:`KERNEL_CHECKS` (the denoiser's seeded scan
at the Nano's Mamba sizes, docs/gpu_kernels.md) and :data:`KERNEL_BENCHMARKS` (the GPU-kernel
issue's), each a command whose exit code is the row's result.

Standard library only: the orchestrator imports it before anything is installed.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

from gpu_check_report import Context, record, run


@dataclass
class Check:
    """A further check: a command run from the repository root; PASS when it exits 0. Its last
    output line is shown as the detail (e.g. a benchmark's JSON line)."""

    name: str
    command: list[str]
    timeout: float = 120.0


KERNEL_CHECKS: list[Check] = [
    Check(
        "seeded scan, S < chunk, Nano sizes",
        [sys.executable, "-m", "tests.kernels.seeded_scan_nano"],
        timeout=300,
    ),
]


# ---- GPU-kernel issue (benchmarks/step_time.py, benchmarks/attention.py, the generation
# ---- benchmark): add their commands here, e.g.
# ----     Check("step time: AR vs two-tower (nano_proxy)", [sys.executable, "benchmarks/step_time.py"])
KERNEL_BENCHMARKS: list[Check] = []


def run_checks(ctx: Context, checks: list[Check]) -> None:
    """Each check's command as one step, its last output line in the report."""
    for check in checks:
        start = time.perf_counter()
        rc, tail = run(
            ctx, check.name.split(":")[0].replace(" ", "_"), check.command, check.timeout
        )
        record(ctx, check.name, rc == 0, start, tail.splitlines()[-1] if tail else "")
