"""The training rows of ``scripts/gpu_check.py``: stage 1 and stage 2 of ``--model`` in bf16 with
Megatron's distributed optimizer (:func:`step_train`), and stage 2 again, SIGKILLed after its
first checkpoint and resumed, against the uninterrupted run (:func:`step_kill_and_resume`).

Standard library only: the orchestrator imports it before anything is installed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from gpu_check_report import REPO, Context, record, run

RESUME = "stage 2: save -> SIGKILL -> resume"


def _train(ctx: Context, recipe: str, run_dir: Path, steps: int, *extra: str) -> list[str]:
    a = ctx.args
    return [
        sys.executable,
        "-m",
        "twotower_train.training",
        "--config-name",
        recipe,
        f"output_dir={run_dir}",
        f"data.root={ctx.out / 'data'}",
        f"model={a.model}",
        "optimizer.precision=bf16",
        "optimizer.use_distributed_optimizer=true",
        f"data.seq_length={a.seq_length}",
        f"training.global_batch_size={a.global_batch}",
        f"training.micro_batch_size={a.micro_batch}",
        "training.log_interval=1",
        "training.eval_interval=0",
        "logging.wandb_mode=disabled",
        f"training.max_steps={steps}",
        "curriculum.phases.0.lr.warmup_steps=2",
        *extra,
    ]


def _metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    records = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by the SIGKILL
            continue
    return records


def _summary(records: list[dict]) -> str:
    if not records:
        return "no metrics"
    steady = records[len(records) // 2 :]  # after the first steps' warm-up and compilation
    tps = sum(r["tokens_per_s"] for r in steady) / len(steady)
    mfus = [r["mfu"] for r in steady if r.get("mfu") is not None]  # none where no peak is known
    mfu = f", MFU {100 * sum(mfus) / len(mfus):.1f}%" if mfus else ""
    return (
        f"loss {records[0]['loss']:.3f} -> {records[-1]['loss']:.3f}; "
        f"{tps:,.0f} tokens/s{mfu} (2nd half)"
    )


def step_train(ctx: Context, name: str, recipe: str, run_dir: Path, *extra: str) -> bool:
    start = time.perf_counter()
    steps = ctx.args.steps
    rc, tail = run(
        ctx, run_dir.name, _train(ctx, recipe, run_dir, steps, *extra), ctx.args.stage_timeout
    )
    records = _metrics(run_dir)
    ok = rc == 0 and [r["step"] for r in records] == list(range(steps))
    detail = _summary(records) if ok else f"exit {rc}: {tail.splitlines()[-1] if tail else ''}"
    return record(ctx, name, ok, start, detail)


def step_kill_and_resume(ctx: Context, reference: Path, *extra: str) -> bool:
    """Stage 2 with a checkpoint every half of the steps, SIGKILL once the first is complete,
    resume to the end (its last checkpoint is what the samplers load)."""
    start = time.perf_counter()
    steps, half = ctx.args.steps, ctx.args.steps // 2
    killed = ctx.out / "stage2_killed"  # one run folder, as a requeued job would use
    ck = killed / "checkpoints"
    args = (*extra, f"checkpoint.dir={ck}", f"checkpoint.save_interval={half}")
    with open(ctx.log("stage2_killed"), "w") as stream:
        proc = subprocess.Popen(
            _train(ctx, "demo_twotower", killed, steps, *args),
            cwd=REPO,
            env=ctx.env,
            stdout=stream,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        marker = ck / f"iter_{half:07d}" / "meta.json"
        deadline = time.monotonic() + ctx.args.stage_timeout
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # no clean shutdown, like a lost node
        proc.wait()
    if not marker.exists():
        detail = f"no checkpoint at step {half} (exit {proc.returncode})"
        return record(ctx, RESUME, False, start, detail)
    before = len(_metrics(killed))
    rc, tail = run(
        ctx,
        "stage2_resumed",
        _train(ctx, "demo_twotower", killed, steps, *args),
        ctx.args.stage_timeout,
    )
    ref = {r["step"]: r["loss"] for r in _metrics(reference)}
    got = {r["step"]: r["loss"] for r in _metrics(killed)[before:]}
    if rc != 0 or sorted(got) != list(range(half, steps)) or not ref:
        return record(ctx, RESUME, False, start, f"exit {rc}; resumed steps {sorted(got)}")
    first = abs(got[half] - ref[half])
    rest = max((abs(got[s] - ref[s]) / abs(ref[s]) for s in got if s != half), default=0.0)
    # The first resumed step runs on the restored bf16 weights: equal. Later steps also depend
    # on the restored fp32 main weights and moments, and on kernel run-to-run reproducibility.
    ok = first == 0.0 and rest <= ctx.args.resume_rtol
    return record(
        ctx,
        RESUME,
        ok,
        start,
        f"killed after the step-{half} checkpoint; resumed step {half} |dloss| = {first:.2e}, "
        f"steps {half + 1}-{steps - 1} max rel dloss = {rest:.2e}",
    )
