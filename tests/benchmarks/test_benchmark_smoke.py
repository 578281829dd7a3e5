"""The benchmark scripts run end to end in their CPU smoke mode (no timing is asserted)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_smoke(script: str) -> tuple[str, dict]:
    env = {**os.environ, "TORCHDYNAMO_DISABLE": "1", "PYTHONPATH": str(REPO)}
    for name in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(name, None)  # the script sets up its own single-process group
    proc = subprocess.run(
        [sys.executable, f"benchmarks/{script}", "--smoke"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = proc.stdout.strip().splitlines()
    return "\n".join(lines[:-1]), json.loads(lines[-1])


def test_step_time_smoke():
    table, report = run_smoke("step_time.py")
    assert report["benchmark"] == "step_time" and report["preset"] == "tiny"
    assert [r["step"] for r in report["rows"]] == ["ar", "two_tower"]
    for row in report["rows"]:
        assert row["ms"] > 0 and row["tokens_per_s"] > 0 and row["model_tflops"] > 0
        assert row["step"] in table
    assert math.isclose(report["ratio"], report["rows"][1]["ms"] / report["rows"][0]["ms"])
    assert "two-tower / AR time" in table


def test_attention_smoke():
    table, report = run_smoke("attention.py")
    assert report["benchmark"] == "attention"
    got = {(r["L"], r["kernel"]) for r in report["rows"]}
    assert got == {(64, "flex"), (128, "flex"), (64, "dense"), (128, "dense")}
    assert all(r["status"] == "ok" and r["ms"] > 0 for r in report["rows"])
    assert "flex" in table and "dense" in table
