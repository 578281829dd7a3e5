"""Run a worker script under ``torchrun`` (gloo, CPU) from a test and surface its output."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from twotower_train.distributed import free_port

WORKERS = Path(__file__).parent / "workers"
REPO = Path(__file__).resolve().parents[2]


def torchrun(worker: str, *args: str, nproc: int = 2, timeout: int = 300) -> str:
    """Launch ``tests/distributed/workers/<worker>`` on ``nproc`` ranks; return its stdout.

    Fails the calling test with the workers' combined output if any rank exits non-zero.
    """
    # The repository root on the path: workers import shared test helpers (tests.*).
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    env = {
        **os.environ,
        "TORCHDYNAMO_DISABLE": "1",
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": path,
    }
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc-per-node={nproc}",
        f"--master-port={free_port()}",
        "--master-addr=127.0.0.1",
        str(WORKERS / worker),
        *args,
    ]
    # Own process group: on a timeout the ranks go too, not only the torchrun launcher.
    proc = subprocess.Popen(
        cmd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        raise AssertionError(
            f"{worker} timed out after {timeout}s:\n{stdout[-6000:]}\n{stderr[-6000:]}"
        ) from None
    if proc.returncode != 0:
        raise AssertionError(
            f"{worker} failed (exit {proc.returncode}):\n{stdout[-6000:]}\n{stderr[-6000:]}"
        )
    return stdout
