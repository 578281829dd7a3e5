"""The denoiser's seeded scan is exact for S < chunk at the Nano's real Mamba sizes (64 heads ×
64, state 128, 8 groups, chunk 128, S = 16 and 32, bf16 activations) against a per-token fp64
recurrence: the released code's GPU defect (a seeded chunk scan with S < chunk gave garbage)
must not be ours. The worker and its tolerances: :mod:`tests.kernels.seeded_scan_nano`.

* under the Triton interpreter (marker ``triton_interpreter``; ~41 s of CPU, as much as all
  the other interpreter cases together, so also ``slow`` and out of the default run:
  ``bash scripts/test.sh -m triton_interpreter tests/kernels``): the kernels
  ``backends`` picks on a GPU — mamba_ssm's differentiable chunk scan (training) and
  megatron-core's forward-only varlen scan (sampling), both with initial states;
* in this process: the CPU path (the pure-torch scan) at the same sizes;
* on a CUDA host (marker ``gpu``): the kernels natively, fp32 and bf16 scans.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch

from tests.kernels import seeded_scan_nano as nano

DIST_ENV = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK")


def _worker(interpreter: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in (*DIST_ENV, "TWOTOWER_MAMBA_KERNELS")}
    env.update(PYTHONUNBUFFERED="1", TORCHDYNAMO_DISABLE="1" if interpreter else "0")
    if interpreter:
        env["TRITON_INTERPRET"] = "1"
    else:
        env.pop("TRITON_INTERPRET", None)
    proc = subprocess.run(
        [sys.executable, "-m", "tests.kernels.seeded_scan_nano"],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    lines = [x for x in proc.stdout.splitlines() if x.startswith("{")]
    assert lines, (
        f"seeded_scan_nano printed no report (exit {proc.returncode}):\n{proc.stderr[-6000:]}"
    )
    report = json.loads(lines[-1])
    assert proc.returncode == 0, "\n".join(report["failures"])
    return report


def _check_kernels(report: dict) -> None:
    entries = {k: e for k, e in report["cases"].items() if isinstance(e, dict)}
    assert len(entries) >= 8, sorted(entries)  # S 16/32 × train/sample × y/final (× dtypes)
    assert report["kernels"]  # so failures() required the kernel implementations
    assert {e["impl"] for e in entries.values()} == set(nano.KERNEL_IMPLS.values())
    assert not nano.failures(report)


@pytest.mark.triton_interpreter
@pytest.mark.slow
def test_seeded_scan_kernels_at_nano_sizes_under_interpreter():
    if torch.cuda.is_available():
        pytest.skip("CUDA host: the kernels run natively (test below)")
    if importlib.util.find_spec("mamba_ssm") is None:
        pytest.skip("mamba_ssm is not installed; scripts/bootstrap.sh installs it (CPU build)")
    _check_kernels(_worker(interpreter=True))


def test_seeded_scan_cpu_path_at_nano_sizes():
    """The CPU path (no kernels in this process): the pure-torch scan, same sizes and checks."""
    report = nano.run(torch.device("cpu"), ["fp32"])
    impls = {e["impl"] for e in report["cases"].values() if isinstance(e, dict)}
    assert impls == {"ssd_scan"}
    assert not nano.failures(report), nano.failures(report)


def test_check_fails_on_a_wrongly_seeded_scan():
    """The tolerance is far below what a seeding defect does: the fp64 recurrence without its
    seed (what a scan that drops or mis-decays the initial state approaches) fails the check."""
    t = nano.nano_inputs(16, seed=16, device="cpu")
    y_ref, final_ref = nano.recurrence(t)
    y_bad, final_bad = nano.recurrence(t, seeded=False)
    report = {
        "device": "cpu",
        "kernels": False,
        "cases": {
            "S16.train.fp32.y": nano._entry("unseeded", y_bad, y_ref, 0.0),
            "S16.train.fp32.final_state": nano._entry("unseeded", final_bad, final_ref, 0.0),
        },
    }
    assert len(nano.failures(report)) == 2


@pytest.mark.gpu
def test_seeded_scan_kernels_at_nano_sizes_on_gpu():
    _check_kernels(_worker(interpreter=False))
