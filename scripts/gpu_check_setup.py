"""The first rows of ``scripts/gpu_check.py``: install the wheels, probe the environment, run
``pytest -m gpu``, build the demo-layout corpus the training rows read.

Standard library only: the orchestrator imports it before anything is installed.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from gpu_check_report import REPO, Context, record, run


def step_install(ctx: Context) -> None:
    start = time.perf_counter()
    wheels = sorted(Path(ctx.args.wheels).glob("*.whl")) if ctx.args.wheels else []
    if not wheels:
        record(ctx, "install from wheels", None, start, "no wheels given: the environment's")
        return
    site = ctx.out / "site"
    rc, tail = run(
        ctx,
        "install",
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-index",
            "--no-deps",
            "--no-compile",
            "--no-cache-dir",
            "--upgrade",
            "--target",
            str(site),
            *map(str, wheels),
        ],
        300,
    )
    probe = (
        "import megatron.core, hydra, omegaconf, twotower_train.training.trainer as t, "
        "importlib.metadata as m; print('megatron-core', m.version('megatron-core'), "
        "'from', t.__file__)"
    )
    if rc == 0:  # the installed project alone, without the checkout on the path
        env = {**ctx.env, "PYTHONPATH": str(site)}
        rc, tail = run(ctx, "install_import", [sys.executable, "-c", probe], 120, env=env)
    ctx.env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(site)])
    record(
        ctx,
        "install from wheels",
        rc == 0,
        start,
        f"{len(wheels)} wheels; " + (tail.splitlines()[-1] if rc == 0 else f"exit {rc}"),
    )


def step_environment(ctx: Context) -> str:
    """The table's title line: device, torch, megatron-core, kernels (not a row)."""
    code = (
        "import torch, importlib.metadata as m\n"
        "from twotower_train import backends\n"
        "cuda = torch.cuda.is_available()\n"
        "name = torch.cuda.get_device_name() if cuda else 'no CUDA device'\n"
        'print(f"{name} | torch {torch.__version__} (CUDA {torch.version.cuda}) | '
        "megatron-core {m.version('megatron-core')} | Transformer Engine "
        "{backends.have_transformer_engine()} | mamba_ssm kernels "
        '{backends.have_mamba_kernels()}")'
    )
    rc, tail = run(ctx, "environment", [sys.executable, "-c", code], 120)
    return tail.splitlines()[-1] if rc == 0 else f"environment probe failed (exit {rc})"


def step_pytest(ctx: Context, cuda: bool) -> None:
    start = time.perf_counter()
    rc, tail = run(
        ctx,
        "pytest_gpu",
        [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "tests"],
        ctx.args.pytest_timeout,
    )
    summary = next((line for line in reversed(tail.splitlines()) if " in " in line), tail[-200:])
    record(ctx, "pytest -m gpu", (rc == 0) if cuda else None, start, summary.strip("= "))


def step_corpus(ctx: Context) -> bool:
    """``OUT/data``: tokenizer + indexed/{wiki,chitchat} (tests/gpu/corpus.py)."""
    start = time.perf_counter()
    rc, tail = run(
        ctx,
        "corpus",
        [
            sys.executable,
            "-c",
            (
                "from tests.gpu.corpus import write_corpus; "
                f"write_corpus({str(ctx.out / 'data')!r}, documents=2000)"
            ),
        ],
        300,
    )
    return record(
        ctx,
        "demo-layout corpus",
        rc == 0,
        start,
        "tokenizer + indexed/{wiki,chitchat}" if rc == 0 else tail.splitlines()[-1],
    )
