"""One prepared check of a GPU host, ending with one summary table (docs/gpu.md).

Run through ``bash scripts/gpu_check.sh`` (which passes ``--wheels .whl`` when that folder holds
the wheels of ``scripts/fetch_gpu_wheels.sh``). Steps, each a row of the table:

1. install the wheels (megatron-core and what else the host lacks, plus our own) into
   ``OUT/site`` with pip, offline, and import the project from there alone;
2. ``pytest -m gpu`` (tests/gpu/: device rule, bf16 distributed optimizer + exact resume,
   inference in bf16 with the towers placed apart);
3. stage 1: ``--steps`` steps of ``--model`` (nano_proxy) in bf16 with Megatron's distributed
   optimizer, on a demo-layout corpus built here (tests/gpu/corpus.py, no ``datasets``);
4. stage 2: ``--steps`` two-tower steps from that backbone;
5. stage 2 again, SIGKILLed after its checkpoint at step ``--steps // 2``, then resumed: the
   resumed steps' losses against run 4 (the first one must be equal);
6. the three samplers on the stage-2 checkpoint in bf16 on the GPU, then again with the towers
   placed on two handles of the device (``cuda:0``, ``cuda:0``): same tokens
   (``scripts/gpu_check_samplers.py``); then ``export-hf`` of it (no model tensor on the GPU)
   and a context-only AR load of the export on the GPU against the whole model
   (``scripts/gpu_check_export.py``);
7. the kernel checks (``KERNEL_CHECKS`` of ``scripts/gpu_check_kernels.py``): the denoiser's
   seeded scan at the Nano's real Mamba sizes with S < chunk against a per-token fp64
   recurrence (the released code's GPU defect; ``tests/kernels/seeded_scan_nano.py``: on CUDA
   the Triton kernels, fp32 and bf16 scans; on a CPU the pure-torch scan, which the dry run
   below checks);
8. batch-1 decoding tok/s (AR, mask diffusion γ = 0.8, speculative; eager and compiled) on the
   trained demo model(s) of ``--demo-model`` and on a Nano-shaped MoE proxy
   (``scripts/gpu_check_decoding.py``);
9. the kernel benchmarks of the GPU-kernel issue (``KERNEL_BENCHMARKS``, same module as 7).

Steps 1, 2 and the corpus are in ``scripts/gpu_check_setup.py``, 3-5 in
``scripts/gpu_check_training.py``; ``scripts/gpu_check_report.py`` runs each step as a
subprocess whose output goes to ``OUT/logs/<step>.log`` and keeps the table. The orchestrator
imports only the standard library and these modules (it runs before anything is installed). A
CPU dry run of the orchestration (tiny model; the GPU-only rows say SKIP)::

    python scripts/gpu_check.py --model tiny --steps 6 --seq-length 64 --global-batch 4 \
        --micro-batch 2 --new-tokens 16 --out /tmp/gpu_check_dry
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import gpu_check_decoding
import gpu_check_export
import gpu_check_samplers
from gpu_check_kernels import KERNEL_BENCHMARKS, KERNEL_CHECKS, run_checks
from gpu_check_report import REPO, Context, record, run, table
from gpu_check_setup import step_corpus, step_environment, step_install, step_pytest
from gpu_check_training import step_kill_and_resume, step_train


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="/tmp/twotower_gpu_check", help="work folder (logs, runs)")
    p.add_argument("--wheels", default=None, help="folder of wheels to install first")
    p.add_argument("--model", default="nano_proxy", help="recipes/model/<name>.yaml")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--seq-length", type=int, default=1024)
    p.add_argument("--global-batch", type=int, default=8)
    p.add_argument("--micro-batch", type=int, default=4)
    p.add_argument("--new-tokens", type=int, default=64, help="per prompt and sampler")
    p.add_argument("--resume-rtol", type=float, default=1e-3)
    p.add_argument("--stage-timeout", type=float, default=240)
    p.add_argument("--pytest-timeout", type=float, default=240)
    p.add_argument(
        "--demo-model",
        action="append",
        help="trained demo model (HF export or stage-2 checkpoint) for the decoding tok/s rows "
        "(repeatable; default runs/demo/hf if present)",
    )
    args = p.parse_args(argv)
    ctx = Context(args, Path(args.out).resolve())
    ctx.out.mkdir(parents=True, exist_ok=True)
    ctx.env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "WANDB_MODE": "disabled",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    step_install(ctx)
    environment = step_environment(ctx)
    cuda = "no CUDA device" not in environment
    step_pytest(ctx, cuda)
    if not step_corpus(ctx):
        print(table(ctx, environment))
        return 1
    stage1 = ctx.out / "stage1"
    if step_train(
        ctx,
        f"stage 1: {args.model} AR, bf16, distributed optimizer",
        "demo",
        stage1,
        f"checkpoint.dir={stage1 / 'checkpoints'}",
    ):
        backbone = f"objective.backbone_checkpoint={stage1 / 'checkpoints'}"
        stage2 = ctx.out / "stage2"
        if step_train(
            ctx,
            f"stage 2: {args.model} two-tower, bf16, distributed optimizer",
            "demo_twotower",
            stage2,
            backbone,
            "checkpoint.dir=null",
        ):
            if step_kill_and_resume(ctx, stage2, backbone):
                checkpoint = ctx.out / "stage2_killed" / "checkpoints"
                gpu_check_samplers.step(ctx, checkpoint, run, record)
                gpu_check_export.step(ctx, checkpoint, run, record)
    run_checks(ctx, KERNEL_CHECKS)
    gpu_check_decoding.step(ctx, cuda, run, record)
    run_checks(ctx, KERNEL_BENCHMARKS)
    report = table(ctx, environment)
    (ctx.out / "summary.md").write_text(report + "\n")
    print("\n" + report, flush=True)
    return 1 if any(r.status == "FAIL" for r in ctx.rows) else 0


if __name__ == "__main__":
    sys.exit(main())
