"""The README demo: a short run of the reproduction pipeline, then the model card's snippet.

    .venv/bin/twotower-demo                 # runs under runs/demo/
    .venv/bin/twotower-demo --fast          # a short smoke version, under runs/demo_fast/

It is ``twotower-reproduce`` (:mod:`twotower_train.eval.reproduce`) with settings sized for a
few minutes on a 2-core CPU (:data:`DEMO`): a small reasoning task (two-step sums up to 15)
mixed with real text, a tiny backbone (``model=tiny`` widths, pattern M*E*: Mamba-2, attention,
MoE), stage-1 AR pretraining, the three-phase curriculum of a shifted denoiser
(``model.denoiser_shift``) S=32 → S=32 → S=16, the HF export, and the evaluation on
held-out problems — the results table (AR, mock-AR, mask diffusion over γ, speculative) is
printed and written to ``OUT/results.{json,md}`` with the γ plot ``OUT/tradeoff.png``. Then it
runs the model card's "Use it with Transformers" code against ``OUT/hf``.

Re-running resumes: finished stages are skipped (see the pipeline's docs, docs/results.md).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from twotower_train.cli import add_debug_flag, run_tool

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")  # megatron's jit_fuser would compile on CPU

TASK = ["--task", "min_steps=2", "--task", "max_steps=2", "--task", "max_start=12",
        "--task", "max_amount=5", "--task", "max_value=15", "--task", "heldout_percent=20",
        "--train-problems", "20000", "--heldout-problems", "150"]
"""A task small enough for minutes of CPU training: 2 steps, totals ≤ 15 (188 held-out chains)."""

TASK_HEAVY = [
    f"data.blends.{name}=[{{prefix:'${{data.root}}/indexed/wiki',weight:{wiki}}},"
    f"{{prefix:'${{data.root}}/indexed/chitchat',weight:{chat}}},"
    f"{{prefix:'${{data.root}}/indexed/task',weight:{task}}}]"
    for name, wiki, chat, task in (("broad", 0.15, 0.15, 0.7), ("quality", 0.1, 0.05, 0.85))
]
"""Blends with more task than ``recipes/data/mini_repro.yaml``'s, so minutes suffice for it."""

DEMO = [
    # Tiny widths; two attention layers (M*E*) copy the operands far better than M*E-.
    "--set", "model=tiny", "--set", "model.pattern=M*E*",
    "--set", "training.log_interval=100", *TASK,
    *[item for blend in TASK_HEAVY for item in ("--set", blend)],
    "--stage1-set", "curriculum.phases.0.steps=1200",
    "--stage1-set", "curriculum.phases.0.lr.peak=3e-3",
    # A low stage-2 lr keeps the AR skill the shifted denoiser starts with (docs/results.md).
    *[item for phase in range(3) for item in
      ("--stage2-set", f"curriculum.phases.{phase}.lr.peak=2e-4")],
    "--stage2-set", "curriculum.phases.0.steps=100",
    "--stage2-set", "curriculum.phases.1.steps=100",
    "--stage2-set", "curriculum.phases.2.steps=1200",
    "--eval-problems", "150",  # every held-out problem
]
FAST = [
    "--set", "model=tiny", "--set", "training.log_interval=10", *TASK,
    "--stage1-set", "curriculum.phases.0.steps=40",
    "--stage1-set", "curriculum.phases.0.lr.warmup_steps=5",
    *[item for phase in range(3) for item in
      ("--stage2-set", f"curriculum.phases.{phase}.steps=10")],
    "--eval-problems", "8", "--max-new-tokens", "16",
]


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
    print(tokenizer.decode(outputs[0][inputs["input_ids"].shape[1]:], skip_special_tokens=True))
    outputs = model.generate_mock_ar(
        inputs["input_ids"], max_new_tokens=128, temperature=0.0,
        eos_token_id=tokenizer.eos_token_id,
    )
    print("=== card: mock-AR ===")
    print(tokenizer.decode(outputs[0], skip_special_tokens=True))
    outputs = model.generate_ar(
        inputs["input_ids"], max_new_tokens=128, temperature=0.0,
        eos_token_id=tokenizer.eos_token_id,
    )
    print("=== card: AR ===")
    print(tokenizer.decode(outputs[0], skip_special_tokens=True))


def main(argv: list[str] | None = None) -> None:
    run_tool("twotower-demo", _main, argv)


def _main(argv: list[str] | None) -> None:
    parser = argparse.ArgumentParser(description="twotower-train end-to-end CPU demo")
    parser.add_argument("--out", help="run folders and results (default runs/demo, with --fast "
                        "runs/demo_fast: a run folder never mixes two settings)")
    parser.add_argument("--fast", action="store_true", help="a short smoke run")
    parser.add_argument("--results-page", help="also write the results page here "
                        "(twotower-reproduce --results-page)")
    add_debug_flag(parser)
    args = parser.parse_args(argv)

    from twotower_train.eval import reproduce

    out = Path(args.out or ("runs/demo_fast" if args.fast else "runs/demo"))
    start = time.perf_counter()
    page = ["--results-page", args.results_page] if args.results_page else []
    command = "twotower-demo" + (" --fast" if args.fast else "") + (
        f" --out {args.out}" if args.out else "") + " ".join(["", *page])
    reproduce.pipeline(["--out", str(out), *(FAST if args.fast else DEMO), *page],
                       command=command)
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


if __name__ == "__main__":
    main()
