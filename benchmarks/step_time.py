"""The AR training step vs the two-tower training step, side by side on one backbone and batch.

Both steps are the objectives' own losses (what the trainer runs) plus backward, measured in one
process with warm-up and the median over repeats, on the same backbone weights (the AR step
trains the denoiser's copy) and the same tokens:

* AR — the backbone over the batch, causal LM loss (stage 1);
* two-tower — the frozen context tower once under no_grad (block-boundary states, K/V), the
  denoiser over all noisy blocks, loss over masked positions, the denoiser's backward (stage 2).

Reported per step: time, tokens/s, model TFLOP/s (the objectives' FLOPs per token, the numbers
the trainer's MFU uses), MFU against the device's bf16 peak looked up by its name
(``training.logging.peak_tflops_by_name``; none if unknown), peak memory; and the two-tower /
AR time ratio, whose ideal is 8N/6N ≈ 1.33 (context forward 2N + denoiser forward and backward
6N, vs 6N) and target ≤ 1.40.

    python benchmarks/step_time.py                    # a CUDA host: nano-proxy, L=8192, S=16, bf16
    python benchmarks/step_time.py --recompute full   # the same with activation recompute
    python benchmarks/step_time.py --smoke            # CPU plumbing check on the tiny preset

Prints a table and one JSON line (``{"benchmark": "step_time", ...}``).
"""

from __future__ import annotations

import argparse
import json

import torch

from twotower_train import distributed
from twotower_train.model.config import Recompute, preset
from twotower_train.timing import median_seconds
from twotower_train.training.config import Precision
from twotower_train.training.curriculum import Curriculum
from twotower_train.training.logging import peak_tflops_by_name
from twotower_train.training.objectives import build_objective

TARGET_RATIO = 1.40


def _phase(block_size: int, seq_len: int, batch: int):
    curriculum = Curriculum.from_dict(
        {
            "phases": [
                {"name": "bench", "block_size": block_size, "blend": [["-", 1.0]], "steps": 2}
            ]
        },
        global_batch_tokens=batch * seq_len,
        seq_length=seq_len,
    )
    return curriculum.phase_at(0)


def _measure(name, loss_fn, params, flops_per_token, tokens, args, device, peak) -> dict:
    def step():
        for p in params:
            p.grad = None
        out, _ = loss_fn()
        out.numerator.backward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds, _ = median_seconds(step, warmup=args.warmup, repeats=args.repeats)
    tokens_per_s = tokens / seconds
    tflops = tokens_per_s * flops_per_token / 1e12
    return {
        "step": name,
        "ms": seconds * 1e3,
        "tokens_per_s": tokens_per_s,
        "model_tflops": tflops,
        "mfu": None if peak is None else tflops / peak,
        "peak_memory_mib": (
            torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="nano-proxy")
    parser.add_argument("--seq-len", type=int, default=8192)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--recompute", default="none", choices=[r.value for r in Recompute])
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="tiny preset, L=64, 1 repeat: checks the script runs (CPU CI)",
    )
    args = parser.parse_args()
    if args.smoke:
        args.preset, args.seq_len, args.batch, args.block_size = "tiny", 64, 2, 16
        args.warmup, args.repeats = 1, 1

    distributed.initialize(seed=0)
    device = distributed.device()
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    cfg = preset(args.preset)
    diffusion, ar = build_objective("diffusion", {}), build_objective("ar", {})
    model = diffusion.build_model(cfg, None, dtype, recompute=Recompute(args.recompute))
    model.to(device).train()
    backbone = model.denoiser.backbone  # the AR step trains this copy: same weights
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(4, cfg.vocab_size, (args.batch, args.seq_len + 1), generator=gen)
    ar_batch = {
        "tokens": tokens[:, :-1].to(device),
        "labels": tokens[:, 1:].to(device),
        "loss_mask": torch.ones(args.batch, args.seq_len, device=device),
    }
    tt_batch = {"tokens": tokens[:, :-1].to(device)}
    phase = _phase(args.block_size, args.seq_len, args.batch)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = peak_tflops_by_name(name, Precision.BF16) if device.type == "cuda" else None
    n_tokens = args.batch * args.seq_len
    rows = [
        _measure(
            "ar",
            lambda: ar.loss(backbone, ar_batch, phase, gen),
            list(backbone.parameters()),
            ar.flops_per_token(cfg, args.seq_len),
            n_tokens,
            args,
            device,
            peak,
        ),
        _measure(
            "two_tower",
            lambda: diffusion.loss(
                model, tt_batch, phase, torch.Generator(device=device).manual_seed(1)
            ),
            model.trainable_parameters(),
            diffusion.flops_per_token(cfg, args.seq_len),
            n_tokens,
            args,
            device,
            peak,
        ),
    ]
    ratio = rows[1]["ms"] / rows[0]["ms"]

    print(
        f"{args.preset}: batch {args.batch} x L={args.seq_len}, S={args.block_size}, "
        f"{str(dtype).removeprefix('torch.')}, recompute={args.recompute}, device: {name}, "
        f"bf16 peak: {'-' if peak is None else f'{peak:.0f} TFLOP/s'}"
    )
    print(f"{'step':>10} {'ms':>10} {'tokens/s':>12} {'TFLOP/s':>9} {'MFU':>7} {'peak MiB':>10}")
    for r in rows:
        mfu = "-" if r["mfu"] is None else f"{r['mfu']:.1%}"
        mem = "-" if r["peak_memory_mib"] is None else f"{r['peak_memory_mib']:.0f}"
        print(
            f"{r['step']:>10} {r['ms']:>10.1f} {r['tokens_per_s']:>12,.0f} "
            f"{r['model_tflops']:>9.3f} {mfu:>7} {mem:>10}"
        )
    print(f"two-tower / AR time: {ratio:.3f}x (ideal 1.333x, target <= {TARGET_RATIO:.2f}x)")
    print(
        json.dumps(
            {
                "benchmark": "step_time",
                "device": name,
                "dtype": str(dtype).removeprefix("torch."),
                "preset": args.preset,
                "seq_len": args.seq_len,
                "batch": args.batch,
                "block_size": args.block_size,
                "recompute": args.recompute,
                "peak_tflops": peak,
                "rows": rows,
                "ratio": ratio,
                "target_ratio": TARGET_RATIO,
                "within_target": ratio <= TARGET_RATIO,
            }
        )
    )
    distributed.shutdown()


if __name__ == "__main__":
    main()
