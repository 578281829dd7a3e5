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
   placed on two handles of the device (``cuda:0``, ``cuda:0``): same tokens; then ``export-hf``
   of it (no model tensor on the GPU) and a context-only AR load of the export on the GPU
   against the whole model (``scripts/gpu_check_export.py``);
7. the kernel checks (:data:`KERNEL_CHECKS`): the denoiser's seeded scan at the Nano's real
   Mamba sizes with S < chunk against a per-token fp64 recurrence (the released code's GPU
   defect; ``tests/kernels/seeded_scan_nano.py``: on CUDA the Triton kernels, fp32 and bf16
   scans; on a CPU the pure-torch scan, which the dry run below checks);
8. batch-1 decoding tok/s (AR, mask diffusion γ = 0.8, speculative; eager and compiled) on the
   trained demo model(s) of ``--demo-model`` and on a Nano-shaped MoE proxy
   (``scripts/gpu_check_decoding.py``);
9. the kernel benchmarks of the GPU-kernel issue (:data:`KERNEL_BENCHMARKS`).

The orchestrator uses the standard library only (it runs before anything is installed); each
step is a subprocess whose output goes to ``OUT/logs/<step>.log``. A CPU dry run of the
orchestration (tiny model; the GPU-only rows say SKIP)::

    python scripts/gpu_check.py --model tiny --steps 6 --seq-length 64 --global-batch 4 \
        --micro-batch 2 --new-tokens 16 --out /tmp/gpu_check_dry
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Row:
    check: str
    status: str  # PASS | FAIL | SKIP
    seconds: float
    detail: str = ""


@dataclass
class Check:
    """A further check: a command run from the repository root; PASS when it exits 0. Its last
    output line is shown as the detail (e.g. a benchmark's JSON line)."""

    name: str
    command: list[str]
    timeout: float = 120.0


KERNEL_CHECKS: list[Check] = [
    Check(
        "seeded scan, S < chunk, Nano sizes",
        [sys.executable, "-m", "tests.kernels.seeded_scan_nano"],
        timeout=300,
    ),
]


# ---- GPU-kernel issue (benchmarks/step_time.py, benchmarks/attention.py, the generation
# ---- benchmark): add their commands here, e.g.
# ----     Check("step time: AR vs two-tower (nano_proxy)", [sys.executable, "benchmarks/step_time.py"])
KERNEL_BENCHMARKS: list[Check] = []


@dataclass
class Context:
    args: argparse.Namespace
    out: Path
    env: dict[str, str] = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)

    def log(self, name: str) -> Path:
        (self.out / "logs").mkdir(parents=True, exist_ok=True)
        return self.out / "logs" / f"{name}.log"


def _run(ctx: Context, name: str, command: list[str], timeout: float, env=None) -> tuple[int, str]:
    """Run ``command`` with its output in ``logs/<name>.log``; (exit code, last lines)."""
    log = ctx.log(name)
    with open(log, "w") as stream:
        stream.write("$ " + shlex.join(command) + "\n")
        stream.flush()
        try:
            rc = subprocess.run(
                command,
                cwd=REPO,
                env=env or ctx.env,
                stdout=stream,
                stderr=subprocess.STDOUT,
                timeout=timeout,
            ).returncode
        except subprocess.TimeoutExpired:
            rc = 124
    tail = log.read_text(errors="replace").strip().splitlines()[-20:]
    return rc, "\n".join(tail)


def _record(ctx: Context, check: str, ok: bool | None, start: float, detail: str) -> bool:
    status = "SKIP" if ok is None else "PASS" if ok else "FAIL"
    ctx.rows.append(Row(check, status, time.perf_counter() - start, detail))
    print(f"[gpu-check] {status} {check}: {detail}", flush=True)
    return bool(ok)


def step_install(ctx: Context) -> None:
    start = time.perf_counter()
    wheels = sorted(Path(ctx.args.wheels).glob("*.whl")) if ctx.args.wheels else []
    if not wheels:
        _record(ctx, "install from wheels", None, start, "no wheels given: the environment's")
        return
    site = ctx.out / "site"
    rc, tail = _run(
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
        rc, tail = _run(ctx, "install_import", [sys.executable, "-c", probe], 120, env=env)
    ctx.env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(site)])
    _record(
        ctx,
        "install from wheels",
        rc == 0,
        start,
        f"{len(wheels)} wheels; " + (tail.splitlines()[-1] if rc == 0 else f"exit {rc}"),
    )


def step_environment(ctx: Context) -> str:
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
    rc, tail = _run(ctx, "environment", [sys.executable, "-c", code], 120)
    return tail.splitlines()[-1] if rc == 0 else f"environment probe failed (exit {rc})"


def step_pytest(ctx: Context, cuda: bool) -> None:
    start = time.perf_counter()
    rc, tail = _run(
        ctx,
        "pytest_gpu",
        [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "tests"],
        ctx.args.pytest_timeout,
    )
    summary = next((line for line in reversed(tail.splitlines()) if " in " in line), tail[-200:])
    _record(ctx, "pytest -m gpu", (rc == 0) if cuda else None, start, summary.strip("= "))


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
    rc, tail = _run(
        ctx, run_dir.name, _train(ctx, recipe, run_dir, steps, *extra), ctx.args.stage_timeout
    )
    records = _metrics(run_dir)
    ok = rc == 0 and [r["step"] for r in records] == list(range(steps))
    detail = _summary(records) if ok else f"exit {rc}: {tail.splitlines()[-1] if tail else ''}"
    return _record(ctx, name, ok, start, detail)


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
        return _record(
            ctx,
            "stage 2: save -> SIGKILL -> resume",
            False,
            start,
            f"no checkpoint at step {half} (exit {proc.returncode})",
        )
    before = len(_metrics(killed))
    rc, tail = _run(
        ctx,
        "stage2_resumed",
        _train(ctx, "demo_twotower", killed, steps, *args),
        ctx.args.stage_timeout,
    )
    ref = {r["step"]: r["loss"] for r in _metrics(reference)}
    got = {r["step"]: r["loss"] for r in _metrics(killed)[before:]}
    if rc != 0 or sorted(got) != list(range(half, steps)) or not ref:
        return _record(
            ctx,
            "stage 2: save -> SIGKILL -> resume",
            False,
            start,
            f"exit {rc}; resumed steps {sorted(got)}",
        )
    first = abs(got[half] - ref[half])
    rest = max((abs(got[s] - ref[s]) / abs(ref[s]) for s in got if s != half), default=0.0)
    # The first resumed step runs on the restored bf16 weights: equal. Later steps also depend
    # on the restored fp32 main weights and moments, and on kernel run-to-run reproducibility.
    ok = first == 0.0 and rest <= ctx.args.resume_rtol
    return _record(
        ctx,
        "stage 2: save -> SIGKILL -> resume",
        ok,
        start,
        f"killed after the step-{half} checkpoint; resumed step {half} |dloss| = {first:.2e}, "
        f"steps {half + 1}-{steps - 1} max rel dloss = {rest:.2e}",
    )


def step_samplers(ctx: Context, checkpoint: Path) -> None:
    start = time.perf_counter()
    rc, tail = _run(
        ctx,
        "samplers",
        [
            sys.executable,
            str(Path(__file__).relative_to(REPO)),
            "--samplers",
            str(checkpoint),
            "--new-tokens",
            str(ctx.args.new_tokens),
        ],
        ctx.args.stage_timeout,
    )
    if rc != 0:
        _record(ctx, "samplers (bf16)", False, start, f"exit {rc}: {tail.splitlines()[-1]}")
        return
    result = json.loads(tail.splitlines()[-1])
    modes = "; ".join(
        f"{name} {m['tokens_per_s']:,.0f} tok/s"
        + (f" ({m['tokens_per_forward']:.2f}/denoiser fwd)" if m["tokens_per_forward"] else "")
        for name, m in result["modes"].items()
    )
    same = all(m["same_when_placed"] for m in result["modes"].values())
    _record(
        ctx,
        "samplers (bf16)",
        same,
        start,
        f"{modes}; towers on {tuple(result['placed'])}: "
        f"{'same tokens' if same else 'DIFFERENT tokens'}",
    )


def samplers_main(checkpoint: str, new_tokens: int) -> None:
    """Sub-process of :func:`step_samplers`: prints one JSON line."""
    import torch

    from twotower_train import distributed
    from twotower_train.decoding import samplers as s
    from twotower_train.inference.load import load_trained_model

    distributed.initialize(seed=0)
    here = distributed.device()
    model, cfg = load_trained_model(checkpoint, device=here, dtype=torch.bfloat16)
    prompts = [[4 + (7 * i + j) % 200 for j in range(8 + 3 * i)] for i in range(4)]
    mask = cfg.model.mask_token_id
    modes = {
        "mask diffusion (S=16, gamma=0.8)": lambda: s.generate_mask_diffusion(
            model, prompts, s.MaskDiffusionConfig(max_new_tokens=new_tokens, mask_token_id=mask)
        ),
        "mock-AR": lambda: s.generate_mock_ar(
            model, prompts, s.MockARConfig(max_new_tokens=new_tokens)
        ),
        "AR": lambda: s.generate_ar(model, prompts, s.ARConfig(max_new_tokens=new_tokens)),
    }

    def timed(run):
        run()  # warm-up
        if here.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = run()
        if here.type == "cuda":
            torch.cuda.synchronize()
        return out, time.perf_counter() - t0

    results = {}
    for name, run in modes.items():
        out, seconds = timed(run)
        new = sum(len(row) for row in out.tokens)
        results[name] = {
            "tokens": out.tokens,
            "tokens_per_s": new / seconds,
            "tokens_per_forward": out.tokens_per_forward if out.denoiser_forwards else None,
        }
    placed = (f"{here.type}:0", f"{here.type}:0") if here.type == "cuda" else ("cpu", "cpu")
    model.place_towers(*placed)
    for name, run in modes.items():
        results[name]["same_when_placed"] = run().tokens == results[name].pop("tokens")
    print(json.dumps({"placed": placed, "modes": results}))


def table(ctx: Context, environment: str) -> str:
    lines = [
        f"twotower-train GPU check - {environment}",
        "",
        "| check | result | seconds | details |",
        "|---|---|---:|---|",
    ]
    lines += [f"| {r.check} | {r.status} | {r.seconds:.0f} | {r.detail} |" for r in ctx.rows]
    total = sum(r.seconds for r in ctx.rows)
    verdict = "FAIL" if any(r.status == "FAIL" for r in ctx.rows) else "PASS"
    lines.append(f"| **all** | **{verdict}** | {total:.0f} | logs: {ctx.out / 'logs'} |")
    return "\n".join(lines)


def run_checks(ctx, checks) -> None:
    """Each check's command as one step, its last output line in the report."""
    for check in checks:
        start = time.perf_counter()
        rc, tail = _run(
            ctx, check.name.split(":")[0].replace(" ", "_"), check.command, check.timeout
        )
        _record(ctx, check.name, rc == 0, start, tail.splitlines()[-1] if tail else "")


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
    p.add_argument("--samplers", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.samplers:
        samplers_main(args.samplers, args.new_tokens)
        return 0
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
    start = time.perf_counter()
    rc, tail = _run(
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
    if not _record(
        ctx,
        "demo-layout corpus",
        rc == 0,
        start,
        "tokenizer + indexed/{wiki,chitchat}" if rc == 0 else tail.splitlines()[-1],
    ):
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
                step_samplers(ctx, ctx.out / "stage2_killed" / "checkpoints")
                import gpu_check_export

                gpu_check_export.step(ctx, ctx.out / "stage2_killed" / "checkpoints", _run, _record)
    run_checks(ctx, KERNEL_CHECKS)
    import gpu_check_decoding

    gpu_check_decoding.step(ctx, cuda, _run, _record)
    run_checks(ctx, KERNEL_BENCHMARKS)
    report = table(ctx, environment)
    (ctx.out / "summary.md").write_text(report + "\n")
    print("\n" + report, flush=True)
    return 1 if any(r.status == "FAIL" for r in ctx.rows) else 0


if __name__ == "__main__":
    sys.exit(main())
