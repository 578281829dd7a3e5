"""The README demo: a short run of the reproduction pipeline, then the model card's snippet.

    .venv/bin/twotower-demo                 # runs under runs/demo/
    .venv/bin/twotower-demo --seed 1 --threads 1   # another seed (runs/demo_seed1/), 1 thread
    .venv/bin/twotower-demo --fast --check  # the short variant CI runs, held to its thresholds

It is ``twotower-reproduce`` (:mod:`twotower_train.reproduce`) with settings sized for a
few minutes on a 2-core CPU (:data:`DEMO_SETTINGS`; ``--fast``: :data:`FAST_SETTINGS`): a
small reasoning task (two-step sums up to 15) mixed with real text, a tiny backbone
(``model=tiny`` widths, pattern M*E*: Mamba-2, attention, MoE), stage-1 AR pretraining, the
three-phase curriculum of a shifted denoiser (``model.denoiser_shift``) S=32 → S=32 → S=16,
the HF export, and the evaluation on
held-out problems — the results table (AR, mock-AR, mask diffusion over γ, speculative: quality,
forward counts, wall-clock tokens/s and speed-up over AR at batch 1 and 8) and the verdict
against the card's operating point (its 2.42× is a wall-clock ratio) are printed and written to
``OUT/results.{json,md}`` with the γ plot ``OUT/tradeoff.png``. Then it
runs the model card's "Use it with Transformers" code against ``OUT/hf``. ``--check`` then
holds the results to the variant's thresholds (:func:`check`): exit 1 with one line naming the
first one missed.

Re-running resumes: finished stages are skipped (see the pipeline's docs, docs/results.md).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from twotower_train.cli import add_debug_flag, run_tool

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")  # megatron's jit_fuser would compile on CPU

TASK = [
    "--task",
    "min_steps=2",
    "--task",
    "max_steps=2",
    "--task",
    "max_start=12",
    "--task",
    "max_amount=5",
    "--task",
    "max_value=15",
    "--task",
    "heldout_percent=20",
    "--train-problems",
    "20000",
    "--heldout-problems",
    "150",
]
"""A task small enough for minutes of CPU training: 2 steps, totals ≤ 15 (188 held-out chains)."""

TASK_HEAVY = [
    f"data.blends.{name}=[{{prefix:'${{data.root}}/indexed/wiki',weight:{wiki}}},"
    f"{{prefix:'${{data.root}}/indexed/chitchat',weight:{chat}}},"
    f"{{prefix:'${{data.root}}/indexed/task',weight:{task}}}]"
    for name, wiki, chat, task in (("broad", 0.05, 0.05, 0.9), ("quality", 0.1, 0.05, 0.85))
]
"""Blends with more task than ``recipes/data/mini_repro.yaml``'s, so minutes suffice for it."""


@dataclass(frozen=True)
class Settings:
    """One demo variant: phase lengths, peak learning rates, evaluation size and the thresholds
    ``--check`` holds it to."""

    stage1_steps: int
    stage1_lr: float
    stage2_steps: tuple[int, int, int]  # S=32 (broad) → S=32 (quality) → S=16 (quality)
    stage2_lr: float
    eval_problems: int
    gammas: str  # mask diffusion's confidence thresholds (the table's rows)
    log_interval: int
    min_ar_exact_match: float
    """AR (context tower) exact match on the held-out problems."""
    min_kept: float
    """Mask diffusion at γ = 0.8: its exact match / AR's."""
    min_tokens_per_forward: float
    """Mask diffusion at γ = 0.8: tokens per denoiser forward."""
    timing_prompts: int
    """Held-out problems whose decoding is timed (wall-clock tokens/s at batch 1 and 8)."""


DEMO_SETTINGS = Settings(
    stage1_steps=1600,
    stage1_lr=3e-3,
    stage2_steps=(100, 100, 1200),
    stage2_lr=2e-4,
    eval_problems=150,
    gammas="0.5,0.7,0.8,0.9,0.95",
    log_interval=100,
    min_ar_exact_match=0.95,
    min_kept=0.95,
    min_tokens_per_forward=2.0,
    timing_prompts=16,
)
FAST_SETTINGS = Settings(
    stage1_steps=500,
    stage1_lr=3e-3,
    stage2_steps=(20, 20, 200),
    stage2_lr=2e-4,
    eval_problems=60,
    gammas="0.8",
    log_interval=50,
    min_ar_exact_match=0.6,
    min_kept=0.7,
    min_tokens_per_forward=1.3,
    timing_prompts=8,
)
GAMMA = 0.8
"""The γ of the README's claim (and of the card's headline)."""


def _phase(stage: str, index: int, steps: int, peak: float, warmup: int) -> list[str]:
    """Overrides for one phase: its length, its peak lr, and a warmup (at most a tenth of the
    phase) and a 20 % anneal that always fit it — a WSD schedule needs warmup + anneal ≤
    steps − 1, which the recipes' fixed warmups break for short phases."""
    key = f"curriculum.phases.{index}"
    return [
        item
        for value in (
            f"{key}.steps={steps}",
            f"{key}.lr.peak={peak}",
            f"{key}.lr.warmup_steps={min(warmup, steps // 10)}",
            f"{key}.lr.decay_fraction=0.2",
        )
        for item in (f"--{stage}-set", value)
    ]


def pipeline_arguments(settings: Settings, seed: int) -> list[str]:
    """``twotower-reproduce`` arguments of a demo variant with ``seed`` (model init, data
    order, masking)."""
    return [
        # Tiny widths; two attention layers (M*E*) copy the operands far better than M*E-.
        "--set",
        "model=tiny",
        "--set",
        "model.pattern=M*E*",
        "--set",
        f"training.seed={seed}",
        "--set",
        f"data.seed={seed}",
        "--set",
        f"training.log_interval={settings.log_interval}",
        *TASK,
        *[item for blend in TASK_HEAVY for item in ("--set", blend)],
        *_phase("stage1", 0, settings.stage1_steps, settings.stage1_lr, warmup=50),
        # A low stage-2 lr keeps the AR skill the shifted denoiser starts with (docs/results.md).
        *[
            item
            for index, steps in enumerate(settings.stage2_steps)
            for item in _phase("stage2", index, steps, settings.stage2_lr, warmup=10)
        ],
        "--eval-problems",
        str(settings.eval_problems),
        "--gammas",
        settings.gammas,
        "--timing-prompts",
        str(settings.timing_prompts),
    ]


def check(report: dict, settings: Settings) -> str | None:
    """The first threshold of ``settings`` that ``report`` (``results.json``) misses, as one
    line; None when all hold."""
    rows = {row["name"]: row for row in report["modes"]}
    ar = rows["AR"]["exact_match"]
    diffusion = rows[f"diffusion γ={GAMMA:g}"]
    kept = diffusion["exact_match"] / ar if ar else 0.0
    per_forward = diffusion["tokens_per_denoiser_forward"] or 0.0
    for name, value, threshold in (
        ("AR exact match", ar, settings.min_ar_exact_match),
        (f"γ={GAMMA:g} quality kept (exact match / AR's)", kept, settings.min_kept),
        (f"γ={GAMMA:g} tokens per denoiser forward", per_forward, settings.min_tokens_per_forward),
    ):
        if value < threshold:
            return f"{name} {value:.3f} is below the threshold {threshold:g}"
    return None


def _run_card(out: Path) -> None:
    """Run the model card's "Use it with Transformers" code against the export ``out`` — as
    the card writes it, except for the devices: both towers on the CPU when there are no two
    GPUs."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)  # the card samples mask diffusion at temperature 0.1
    two_gpus = torch.cuda.device_count() >= 2
    context_device, denoiser_device = ("cuda:0", "cuda:1") if two_gpus else ("cpu", "cpu")
    model_name = str(out)
    # ---- the card's code ----
    tokenizer = AutoTokenizer.from_pretrained(model_name)
    model = AutoModelForCausalLM.from_pretrained(
        model_name,
        torch_dtype=torch.bfloat16,
        trust_remote_code=True,
    )
    # AR/context tower -> GPU 0, diffusion/denoiser tower -> GPU 1
    model.place_towers_on_devices(context_device, denoiser_device)
    model.eval()
    prompt = "France is a country "
    inputs = tokenizer(prompt, return_tensors="pt").to(context_device)
    outputs = model.generate_mask_diffusion(
        inputs["input_ids"],
        max_new_tokens=128,
        block_size=model.config.block_size,  # tokens generated per block (as trained)
        steps_per_block=model.config.block_size,  # denoising iterations per block
        mask_token_id=3,  # [MASK]
        temperature=0.1,
        confidence_threshold=0.8,  # commit positions above this confidence each step
        eos_token_id=tokenizer.eos_token_id,
    )
    print("\n=== card: mask diffusion ===")
    print(tokenizer.decode(outputs[0][inputs["input_ids"].shape[1] :], skip_special_tokens=True))
    outputs = model.generate_mock_ar(
        inputs["input_ids"],
        max_new_tokens=128,
        temperature=0.0,
        eos_token_id=tokenizer.eos_token_id,
    )
    print("=== card: mock-AR ===")
    print(tokenizer.decode(outputs[0], skip_special_tokens=True))
    outputs = model.generate_ar(
        inputs["input_ids"],
        max_new_tokens=128,
        temperature=0.0,
        eos_token_id=tokenizer.eos_token_id,
    )
    print("=== card: AR ===")
    print(tokenizer.decode(outputs[0], skip_special_tokens=True))


def main(argv: list[str] | None = None) -> None:
    run_tool("twotower-demo", _main, argv)


def _main(argv: list[str] | None) -> None:
    parser = argparse.ArgumentParser(
        prog="twotower-demo", description="twotower-train end-to-end CPU demo"
    )
    parser.add_argument(
        "--out",
        help="run folders and results (default runs/demo, runs/demo_fast "
        "with --fast, _seedN added for --seed N ≠ 0: a run folder never mixes "
        "two settings)",
    )
    parser.add_argument(
        "--fast", action="store_true", help="a short version (its own, lower thresholds)"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="model init, data order and masking (default 0)"
    )
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument(
        "--check",
        action="store_true",
        help="exit 1 with one line when a "
        "threshold of the variant is missed (AR exact match; at γ=0.8 the "
        "quality kept and tokens per denoiser forward)",
    )
    parser.add_argument(
        "--results-page",
        help="also write the results page here (twotower-reproduce --results-page)",
    )
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    if args.seed < 0 or (args.threads is not None and args.threads < 1):
        parser.error("--seed must be >= 0 and --threads >= 1")

    from twotower_train.reproduce import pipeline

    settings = FAST_SETTINGS if args.fast else DEMO_SETTINGS
    default_out = "runs/demo_fast" if args.fast else "runs/demo"
    out = Path(args.out or default_out + (f"_seed{args.seed}" if args.seed else ""))
    start = time.perf_counter()
    extra = ["--results-page", args.results_page] if args.results_page else []
    extra += ["--threads", str(args.threads)] if args.threads else []
    command = " ".join(
        [
            "twotower-demo",
            *(["--fast"] if args.fast else []),
            *([f"--seed {args.seed}"] if args.seed else []),
            *([f"--out {args.out}"] if args.out else []),
            *extra,
        ]
    )
    report = pipeline.pipeline(
        ["--out", str(out), *pipeline_arguments(settings, args.seed), *extra], command=command
    )
    _run_card(out / "hf")
    print(
        f"\n[demo] done in {time.perf_counter() - start:.0f}s\n"
        f"  data + tokenizer : {out / 'data'}\n"
        f"  stage-1 backbone : {out / 'stage1'}\n"
        f"  stage-2 two-tower: {out / 'stage2'}\n"
        f"  reports          : summary.json, loss_curve.png, console.log, recipe.yaml, "
        "metrics.jsonl, wandb/ in each stage folder\n"
        f"  results          : {out / 'results.md'}, {out / 'results.json'}, "
        f"{out / 'tradeoff.png'}\n"
        f"  Hugging Face     : {out / 'hf'}"
    )
    if args.check:
        missed = check(report, settings)
        if missed:
            print(f"twotower-demo --check: {missed} ({out / 'results.json'})", file=sys.stderr)
            raise SystemExit(1)
        print(
            f"[demo] --check: every threshold holds (AR exact match ≥ "
            f"{settings.min_ar_exact_match:g}; γ={GAMMA:g} keeps ≥ {settings.min_kept:.0%} "
            f"of AR at ≥ {settings.min_tokens_per_forward:g} tokens per denoiser forward)"
        )
