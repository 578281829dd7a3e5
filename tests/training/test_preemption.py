"""SIGTERM / SIGUSR1 during training: finish the step, checkpoint, exit 0 (CLI subprocess)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.training.fixtures import TINY_OVERRIDES
from twotower_train.training.checkpoint import find_latest, read_train_state

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1])
def test_signal_checkpoints_and_exits_cleanly(data_root, tmp_path, signum):
    run = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "twotower_train.training", f"data.root={data_root}",
        f"output_dir={run}", *TINY_OVERRIDES, "curriculum.phases.0.steps=500",
        "checkpoint.save_interval=0",
    ]
    # A fresh single-process run: drop the rendezvous variables an in-process test may have set.
    rendezvous = {"MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK"}
    env = {k: v for k, v in os.environ.items() if k not in rendezvous}
    env.update(TORCHDYNAMO_DISABLE="1", OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    metrics = run / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
            break
        time.sleep(0.2)
    proc.send_signal(signum)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert "preemption signal" in out and "twotower-train: preempted" in out, out
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    latest = find_latest(run / "checkpoints")
    assert read_train_state(latest).step == steps[-1] + 1 < 500
    assert (run / "hydra" / "config.yaml").is_file()  # Hydra's files under the run folder
