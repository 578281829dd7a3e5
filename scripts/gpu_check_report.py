"""The rows of ``scripts/gpu_check.py``: each step is a subprocess whose output goes to
``OUT/logs/<step>.log`` (:func:`run`), and adds one row (:func:`record`) to the summary table
(:func:`table`).

Standard library only: the orchestrator imports it before anything is installed.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Row:
    check: str
    status: str  # PASS | FAIL | SKIP
    seconds: float
    detail: str = ""


@dataclass
class Context:
    args: argparse.Namespace
    out: Path
    env: dict[str, str] = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)

    def log(self, name: str) -> Path:
        (self.out / "logs").mkdir(parents=True, exist_ok=True)
        return self.out / "logs" / f"{name}.log"


def run(ctx: Context, name: str, command: list[str], timeout: float, env=None) -> tuple[int, str]:
    """Run ``command`` with its output in ``logs/<name>.log``; (exit code, last lines)."""
    log = ctx.log(name)
    with open(log, "w") as stream:
        stream.write("$ " + shlex.join(command) + "\n")
        stream.flush()
        try:
            rc = subprocess.run(
                command,
                cwd=REPO,
                env=env or ctx.env,
                stdout=stream,
                stderr=subprocess.STDOUT,
                timeout=timeout,
            ).returncode
        except subprocess.TimeoutExpired:
            rc = 124
    tail = log.read_text(errors="replace").strip().splitlines()[-20:]
    return rc, "\n".join(tail)


def record(ctx: Context, check: str, ok: bool | None, start: float, detail: str) -> bool:
    """One row: ``ok`` None is a SKIP. Returns whether it passed."""
    status = "SKIP" if ok is None else "PASS" if ok else "FAIL"
    ctx.rows.append(Row(check, status, time.perf_counter() - start, detail))
    print(f"[gpu-check] {status} {check}: {detail}", flush=True)
    return bool(ok)


def table(ctx: Context, environment: str) -> str:
    lines = [
        f"twotower-train GPU check - {environment}",
        "",
        "| check | result | seconds | details |",
        "|---|---|---:|---|",
    ]
    lines += [f"| {r.check} | {r.status} | {r.seconds:.0f} | {r.detail} |" for r in ctx.rows]
    total = sum(r.seconds for r in ctx.rows)
    verdict = "FAIL" if any(r.status == "FAIL" for r in ctx.rows) else "PASS"
    lines.append(f"| **all** | **{verdict}** | {total:.0f} | logs: {ctx.out / 'logs'} |")
    return "\n".join(lines)
