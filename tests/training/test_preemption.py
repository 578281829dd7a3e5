"""SIGTERM / SIGUSR1 to the whole process group during training (what ``timeout``, ``kill -TERM
-PGID`` and schedulers do): finish the step, checkpoint, exit 0 (CLI subprocess).

Every process of the group gets the signal — dist_checkpointing's writer process included. A
checkpoint is saved before the signal, so that writer process is already running when it
arrives (the case that used to end in a BrokenPipeError and a left-over ``iter_*.tmp``).
"""

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
from twotower_train.training.checkpoint import read_train_state
from twotower_train.training.checkpoint_layout import find_latest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1])
def test_group_signal_checkpoints_and_exits_cleanly(data_root, tmp_path, signum):
    run = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "twotower_train.training",
        f"data.root={data_root}",
        f"output_dir={run}",
        *TINY_OVERRIDES,
        "curriculum.phases.0.steps=500",
        "checkpoint.save_interval=2",
    ]
    # A fresh single-process run: drop the rendezvous variables an in-process test may have set.
    rendezvous = {"MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK"}
    env = {k: v for k, v in os.environ.items() if k not in rendezvous}
    env.update(TORCHDYNAMO_DISABLE="1", OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    metrics = run / "metrics.jsonl"
    deadline = time.monotonic() + 300  # start-up alone is tens of seconds on a busy 2-core box
    while time.monotonic() < deadline and proc.poll() is None:
        if (run / "checkpoints" / "latest").is_file():  # saved once: the writer process runs
            break
        time.sleep(0.2)
    assert (run / "checkpoints" / "latest").is_file(), proc.kill() or proc.communicate()[0]
    os.killpg(proc.pid, signum)  # the group: the trainer and every process it started
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 0, out
    assert "preemption signal" in out and "twotower-train: preempted" in out, out
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    latest = find_latest(run / "checkpoints")
    assert read_train_state(latest).step == steps[-1] + 1 > 2  # `latest` advanced
    assert not list((run / "checkpoints").glob("*.tmp")), out
    summary = json.loads((run / "summary.json").read_text())
    assert summary["outcome"] == "preempted" and summary["steps_done"] == steps[-1] + 1
    assert "preemption signal" in (run / "console.log").read_text()
