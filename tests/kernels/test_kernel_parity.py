"""The GPU kernels against their reference paths, on the CPU and on a GPU.

Mamba: on a CPU the Triton kernels run under the Triton interpreter in a subprocess
(:mod:`tests.kernels.kernel_parity`, ~25 s of CPU for all cases, ~40 s with imports); on a CUDA host the same worker
runs natively, in fp32 and in bf16 (marker ``gpu``), plus causal_conv1d's seeded conv and the
denoiser's compiled block-sparse FlexAttention (forward, backward, and its memory growing
linearly in L). Every entry is also checked for *which* implementation the backend picked, so a
silent fall-back to the reference cannot pass.

Tolerances are relative to the largest reference magnitude of each quantity:

* fp32 under the interpreter: ``1e-4``. Kernel and reference compute the same sums in another
  order (chunked Triton tiles vs einsums); measured ≤ 2e-6 relative for every output, state and
  gradient, while any wiring error (a wrong state, chunk boundary or gate) is O(1) relative.
* fp32 on a GPU: ``5e-3``. Triton's ``tl.dot`` (the Mamba kernels and compiled FlexAttention)
  multiplies fp32 tiles in TF32 (10-bit mantissa) by default; the torch references do not.
* bf16 on a GPU: ``2e-2`` for outputs and states, ``5e-2`` for gradients — a few bf16 ulps
  (2^-8 ≈ 4e-3): both sides round the same bf16 inputs and accumulate in fp32, but the kernels
  also keep chunk states and some gradient partials in bf16. (The interpreter cannot check
  this: it mis-reads bf16 memory.)
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch

pytestmark = pytest.mark.triton_interpreter

# The implementation each case must get from the backend (causal_conv1d's CUDA conv, where
# installed, takes precedence over megatron's Triton one).
KERNEL_IMPLS = {
    "scan_boundaries": {"ssd_scan_varlen"},
    "conv_boundaries": {"causal_conv1d_varlen", "causal_conv1d_cuda"},
    "scan_seeded": {"ssd_scan_differentiable"},
    "conv_seeded": {"causal_conv1d_cuda"},
    "flex_training": {"flex_compiled"},
}
DIST_ENV = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK")
INTERPRETER_CASES = ["scan_boundaries", "conv_boundaries", "scan_seeded", "two_tower", "sampling"]


def expected_impls(case: str, quantity: str) -> set[str]:
    if case == "two_tower":  # context tower: forward-only kernels; denoiser: differentiable
        case = {"context_ssm": "scan_boundaries", "context_con": "conv_boundaries"}.get(
            quantity[:11], "scan_seeded"
        )
    if case == "sampling":  # no gradient anywhere: the forward-only kernels
        case = "conv_boundaries" if "conv" in quantity else "scan_boundaries"
    return KERNEL_IMPLS[case]


def run_worker(*args: str, interpreter: bool) -> dict:
    # On a GPU torch.compile must be live (compiled FlexAttention); under the interpreter
    # megatron's jit_fuser compiles would only cost time.
    env = {
        **os.environ,
        "TORCHDYNAMO_DISABLE": "1" if interpreter else "0",
        "PYTHONUNBUFFERED": "1",
    }
    # A fresh single-process group: not the rendezvous this pytest process may have set up.
    for name in ("TWOTOWER_MAMBA_KERNELS", *DIST_ENV):
        env.pop(name, None)
    if interpreter:
        env["TRITON_INTERPRET"] = "1"
    else:
        env.pop("TRITON_INTERPRET", None)
    proc = subprocess.run(
        [sys.executable, "-m", "tests.kernels.kernel_parity", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if proc.returncode != 0:
        raise AssertionError(f"kernel_parity failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def check_case(report: dict, case: str, rtol: float, grad_rtol: float | None = None) -> None:
    entries = {k: v for k, v in report[case].items() if "max_abs_diff" in v}
    assert entries, f"{case}: no quantities compared"
    failures = []
    for quantity, e in entries.items():
        if e["impl"] not in expected_impls(case, quantity):
            failures.append(
                f"{quantity}: backend picked {e['impl']}, expected one of "
                f"{sorted(expected_impls(case, quantity))}"
            )
        tol = grad_rtol if grad_rtol is not None and "grad" in quantity else rtol
        if not e["max_abs_diff"] <= tol * e["ref_max_abs"] + 1e-12:
            failures.append(
                f"{quantity}: |Δ|max {e['max_abs_diff']:.3e} > {tol:g} · {e['ref_max_abs']:.3e}"
            )
    assert not failures, f"{case} ({report['device']}, {report['dtype']}):\n" + "\n".join(failures)


@pytest.fixture(scope="module")
def interpreter_report():
    if torch.cuda.is_available():
        pytest.skip("CUDA host: the kernels run natively (gpu tests below)")
    if importlib.util.find_spec("mamba_ssm") is None:
        pytest.skip("mamba_ssm is not installed; scripts/bootstrap.sh installs it (CPU build)")
    return run_worker("--cases", *INTERPRETER_CASES, interpreter=True)


@pytest.mark.parametrize("case", INTERPRETER_CASES)
def test_kernels_match_reference_under_interpreter(interpreter_report, case):
    check_case(interpreter_report, case, rtol=1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_kernels_match_reference_on_gpu(dtype):
    from twotower_train import backends

    cases = [
        *INTERPRETER_CASES,
        "flex_training",
        *(["conv_seeded"] if backends.have_causal_conv1d() else []),
    ]
    report = run_worker("--dtype", dtype, "--cases", *cases, interpreter=False)
    for case in cases:
        if dtype == "float32":
            check_case(report, case, rtol=5e-3)
        else:
            check_case(report, case, rtol=2e-2, grad_rtol=5e-2)
    # O(L·S), not O(L^2): doubling L at most ~doubles the block-sparse kernel's extra memory.
    memory = report["flex_training"]["extra_memory_bytes"]
    assert memory["L4096"] <= 2.6 * memory["L2048"], memory
