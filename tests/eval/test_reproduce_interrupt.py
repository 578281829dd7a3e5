"""Ctrl-C during ``twotower-reproduce``'s stage 1, through the real CLI (SIGINT to the process
group, as a terminal sends it): the training step finishes, a loadable checkpoint and the run's
``summary.json`` are written, stderr says so in lines of the tool (no traceback) and the exit code
is 130. ``twotower-demo`` runs the same pipeline."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.eval.test_reproduce import TASK
from twotower_train.training.checkpoint import read_train_state
from twotower_train.training.checkpoint_layout import find_latest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_ctrl_c_in_stage_1_checkpoints_and_exits_130(tmp_path):
    out = tmp_path / "repro"
    rendezvous = {"MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK"}
    env = {k: v for k, v in os.environ.items() if k not in rendezvous | {"TWOTOWER_DEBUG"}}
    env.update(TORCHDYNAMO_DISABLE="1", OMP_NUM_THREADS="1", WANDB_MODE="offline")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "twotower_train.reproduce",
            "--out",
            str(out),
            *TASK,
            "--stage1-set",
            "curriculum.phases.0.steps=500",
            "--stage1-set",
            "checkpoint.save_interval=2",
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    latest = out / "stage1" / "checkpoints" / "latest"
    deadline = time.monotonic() + 900  # the data stage first, on a busy 2-core box
    while time.monotonic() < deadline and proc.poll() is None and not latest.is_file():
        time.sleep(0.2)
    assert latest.is_file(), proc.kill() or proc.communicate()
    os.killpg(proc.pid, signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130, stdout[-2000:] + stderr[-3000:]
    assert "Traceback" not in stdout + stderr and "KeyboardInterrupt" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert all(line.startswith(("twotower-train:", "twotower-reproduce:")) for line in lines), lines
    assert "stopped early (interrupted) with a checkpoint" in lines[-1], lines
    run = out / "stage1"
    step = read_train_state(find_latest(run / "checkpoints")).step
    summary = json.loads((run / "summary.json").read_text())
    assert summary["outcome"] == "interrupted" and summary["steps_done"] == step > 2
    assert not (out / "stage2").exists()
