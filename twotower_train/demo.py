"""The end-to-end CPU demo: data → stage-1 AR backbone → stage-2 two-tower curriculum → samples.

    .venv/bin/twotower-demo                 # runs under runs/demo/, data in runs/demo_data/
    .venv/bin/twotower-demo --fast          # a short smoke version, under runs/demo_fast/

1. builds the bundled demo corpus and its tokenizer (``data_tools.demo_corpus``) in
   ``runs/demo_data`` — the recipes' default ``data.root``, so ``twotower-train`` uses it too;
2. pretrains the small backbone (preset ``small``: M*EM*E-, hidden 128) with next-token prediction (``recipes/demo.yaml``);
3. trains the two-tower denoiser from it through the three-phase curriculum S=32 → S=32 → S=16
   (``recipes/demo_twotower.yaml``), checkpointing as it goes;
4. reloads the final checkpoint and prints continuations of a few prompts with mask diffusion,
   mock-AR and AR, with the tokens committed per denoiser forward (also saved as
   ``runs/demo/samples.txt``);
5. exports the final checkpoint to a Hugging Face folder (``runs/demo/hf/``, tokenizer included)
   and runs the model card's snippet against it (mask diffusion, mock-AR, AR);
6. prints where everything was written. Each stage's run folder holds its report (recipe,
   console log, metrics, wandb offline run, summary, loss curve; docs/training.md).

Re-running resumes: finished stages are detected from their checkpoints and skipped.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from twotower_train.cli import add_debug_flag, run_tool

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")  # megatron's jit_fuser would compile on CPU

PROMPTS = [
    "The city is located on the",
    "In mathematics, a prime number is",
    "Hello! How are you doing today?",
]


def _stage(recipe: str, overrides: list[str]) -> Path:
    from twotower_train.training.config import load_config
    from twotower_train.training.main import run

    cfg = load_config(recipe, overrides)
    start = time.perf_counter()
    result = run(cfg)
    print(f"[demo] {recipe}: {result.outcome.replace('_', ' ')} in "
          f"{time.perf_counter() - start:.0f}s -> {result.run_dir}")
    return result.checkpoint_dir


def _samples(checkpoint_dir: Path, tokenizer_dir: Path, block_size: int) -> list[str]:
    """Print the continuations of every mode; return the same lines (for samples.txt)."""
    from transformers import AutoTokenizer

    from twotower_train.inference.load import load_trained_model
    from twotower_train.inference.samplers import (
        ARConfig,
        MaskDiffusionConfig,
        MockARConfig,
        generate_ar,
        generate_mask_diffusion,
        generate_mock_ar,
    )

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    model, cfg = load_trained_model(checkpoint_dir)
    prompts = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
    eos, mask = cfg.model.eos_token_id, cfg.model.mask_token_id
    def diffusion(steps_per_block: int):
        return lambda: generate_mask_diffusion(model, prompts, MaskDiffusionConfig(
            max_new_tokens=32, block_size=block_size, steps_per_block=steps_per_block,
            mask_token_id=mask, confidence_threshold=0.8, eos_token_id=eos))

    # The card's operating point (γ=0.8, S=16, 16 steps), and a faster one whose floor commits
    # at least 4 tokens per denoiser forward.
    modes = {
        f"mask diffusion, S={block_size}, {block_size} steps/block": diffusion(block_size),
        f"mask diffusion, S={block_size}, {block_size // 4} steps/block": diffusion(block_size // 4),
        "mock-AR": lambda: generate_mock_ar(
            model, prompts, MockARConfig(max_new_tokens=32, mask_token_id=mask, eos_token_id=eos)),
        "AR (context tower)": lambda: generate_ar(
            model, prompts, ARConfig(max_new_tokens=32, eos_token_id=eos)),
    }
    lines = []
    for name, generate in modes.items():
        start = time.perf_counter()
        out = generate()
        seconds = time.perf_counter() - start
        per_forward = (
            f", {out.tokens_per_forward:.2f} tokens / denoiser forward"
            if out.denoiser_forwards else ""
        )
        lines += ["", f"=== {name} (greedy{per_forward}, {seconds:.1f}s) ==="]
        for prompt, new in zip(PROMPTS, out.tokens):
            lines.append(f"  {prompt!r} -> {tokenizer.decode(new, skip_special_tokens=True)!r}")
    print("\n".join(lines))
    return lines


def _export_and_run_card(checkpoint_dir: Path, tokenizer_dir: Path, out: Path) -> None:
    """Export the final checkpoint (``twotower-convert export-hf``) and run the model card's
    "Use it with Transformers" code against the folder — as the card writes it, except for the
    devices: both towers on the CPU when there are no two GPUs."""
    from twotower_train.convert.checkpoints import export_checkpoint

    start = time.perf_counter()
    export_checkpoint(checkpoint_dir, out, tokenizer=tokenizer_dir, overwrite=True)
    print(f"\n[demo] exported {checkpoint_dir} -> {out} in {time.perf_counter() - start:.1f}s")

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
        block_size=16,  # tokens generated per block
        steps_per_block=16,  # denoising iterations per block
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
    parser.add_argument("--out", help="run folders and samples (default runs/demo, with --fast "
                        "runs/demo_fast: a run folder never mixes two recipes)")
    parser.add_argument("--data", default="runs/demo_data",
                        help="demo corpus + tokenizer (the recipes' default data.root)")
    parser.add_argument("--fast", action="store_true", help="a short smoke run")
    add_debug_flag(parser)
    args = parser.parse_args(argv)

    import twotower_train  # noqa: F401  (CPU compatibility)
    from data_tools.demo_corpus import prepare_demo_data
    from twotower_train import distributed

    out = Path(args.out or ("runs/demo_fast" if args.fast else "runs/demo"))
    data_dir = Path(args.data)
    start = time.perf_counter()
    data = prepare_demo_data(data_dir)
    print(f"[demo] corpus + tokenizer ready in {data_dir}")
    common = [f"data.root={data_dir}"]
    if args.fast:
        stage1_steps = [
            "curriculum.phases.0.steps=40", "curriculum.phases.0.lr.warmup_steps=5",
            "training.log_interval=10",
        ]
        stage2_steps = [f"curriculum.phases.{i}.steps=10" for i in range(3)]
    else:
        stage1_steps, stage2_steps = [], []
    stage1 = _stage(
        "demo", common + stage1_steps + [f"output_dir={out / 'stage1'}"]
    )
    stage2 = _stage(
        "demo_twotower",
        common + stage2_steps + [
            f"output_dir={out / 'stage2'}", f"objective.backbone_checkpoint={stage1}",
        ],
    )
    distributed.initialize(seed=0)
    samples = out / "samples.txt"
    lines = _samples(stage2, Path(data.tokenizer_dir), block_size=16)
    samples.write_text(f"checkpoint: {stage2}\n" + "\n".join(lines) + "\n")
    _export_and_run_card(stage2, Path(data.tokenizer_dir), out / "hf")
    print(
        f"\n[demo] done in {time.perf_counter() - start:.0f}s\n"
        f"  data + tokenizer : {data_dir}\n"
        f"  stage-1 backbone : {stage1}\n"
        f"  stage-2 two-tower: {stage2}\n"
        f"  reports          : {stage1.parent}, {stage2.parent} (summary.json, loss_curve.png, "
        "console.log, recipe.yaml, metrics.jsonl, wandb/)\n"
        f"  samples          : {samples}\n"
        f"  Hugging Face     : {out / 'hf'}"
    )
    distributed.shutdown()


if __name__ == "__main__":
    main()
