"""Ctrl-C (SIGINT to the whole process group, as a terminal sends it) during training, through
the CLI: the step finishes, a checkpoint and ``summary.json`` are written, one line says so and
the exit code is 130; the same command resumes from that checkpoint. A second Ctrl-C aborts at
once with one line.
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


def _env() -> dict[str, str]:
    rendezvous = {"MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK"}
    env = {k: v for k, v in os.environ.items() if k not in rendezvous | {"TWOTOWER_DEBUG"}}
    env.update(TORCHDYNAMO_DISABLE="1", OMP_NUM_THREADS="1")
    return env


def _cmd(data_root, run, *extra) -> list[str]:
    return [
        sys.executable,
        "-m",
        "twotower_train.training",
        f"data.root={data_root}",
        f"output_dir={run}",
        *TINY_OVERRIDES,
        "curriculum.phases.0.steps=500",
        "checkpoint.save_interval=2",
        *extra,
    ]


def _start_and_wait_for_a_save(data_root, run) -> subprocess.Popen:
    proc = subprocess.Popen(
        _cmd(data_root, run),
        cwd=REPO,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300  # start-up alone is tens of seconds on a busy 2-core box
    while time.monotonic() < deadline and proc.poll() is None:
        if (run / "checkpoints" / "latest").is_file():
            break
        time.sleep(0.2)
    assert (run / "checkpoints" / "latest").is_file(), proc.kill() or proc.communicate()
    return proc


def test_ctrl_c_checkpoints_writes_the_report_and_resumes(data_root, tmp_path):
    run = tmp_path / "run"
    proc = _start_and_wait_for_a_save(data_root, run)
    os.killpg(proc.pid, signal.SIGINT)  # the group: trainer and checkpoint writer alike
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 130, out + err
    assert "Traceback" not in out + err and "KeyboardInterrupt" not in out + err, err
    notices = [line for line in err.splitlines() if line.startswith("twotower-train:")]
    assert len(notices) == 1 and "Ctrl-C: finishing this step" in notices[0], err
    assert f"twotower-train: interrupted at {run}" in out, out
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    latest = find_latest(run / "checkpoints")
    step = read_train_state(latest).step
    assert step == metrics[-1]["step"] + 1 > 2  # the checkpoint of the step that was running
    assert not list((run / "checkpoints").glob("*.tmp"))
    summary = json.loads((run / "summary.json").read_text())
    assert summary["outcome"] == "interrupted" and summary["steps_done"] == step

    resumed = subprocess.run(
        _cmd(data_root, run, f"training.max_steps={step + 1}"),
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"resumed from {latest} at step {step}" in resumed.stdout, resumed.stdout
    assert read_train_state(find_latest(run / "checkpoints")).step == step + 1


@pytest.mark.slow
def test_second_ctrl_c_aborts_at_once(data_root, tmp_path):
    run = tmp_path / "run"
    proc = _start_and_wait_for_a_save(data_root, run)
    saved = read_train_state(find_latest(run / "checkpoints")).step
    os.killpg(proc.pid, signal.SIGINT)
    # Two signals that arrive before Python runs the handler are one Ctrl-C (the interpreter
    # keeps a flag, not a count): the second goes once the first has been seen, as a user's would.
    seen = ""
    while "Ctrl-C: finishing this step" not in seen:
        line = proc.stderr.readline()
        assert line, seen  # the first Ctrl-C was announced before stderr closed
        seen += line
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    err = seen + err
    assert proc.returncode == 130, out + err
    assert "Traceback" not in out + err, err
    assert err.splitlines()[-1].startswith("twotower-train: aborted (second Ctrl-C)"), err
    assert read_train_state(find_latest(run / "checkpoints")).step >= saved  # still loadable
