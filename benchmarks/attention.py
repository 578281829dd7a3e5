"""Denoiser attention: block-sparse FlexAttention vs the dense mask, forward+backward time and memory.

The denoiser's queries (L noisy positions) attend to [context K/V (L)] ⊕ [noisy K/V (L)] under
the two-tower block mask (:mod:`twotower_train.diffusion.masks`). ``flex`` is the compiled
block-sparse kernel training uses on a GPU; ``dense`` is SDPA with the (L, 2L) boolean mask, the
CPU path and reference. Per length and kernel: median time of forward+backward (after warm-up,
so compilation is excluded), and peak memory allocated beyond the inputs. Nano's attention shape
(32 heads, 2 KV groups, head dim 128), batch 1, bf16.

    python benchmarks/attention.py                  # a CUDA host: L = 2k, 8k, 32k, S = 16
    python benchmarks/attention.py --smoke          # CPU plumbing check on tiny shapes

Prints a table and one JSON line (``{"benchmark": "attention", ...}``). On a CPU there is no
FlexAttention backward, so ``flex`` is timed forward-only there (``passes`` says which).
"""

from __future__ import annotations

import argparse
import json

import torch

from twotower_train.ops.block_attention import AttentionBackend, denoiser_attention
from twotower_train.timing import median_seconds

KERNELS = {"flex": AttentionBackend.FLEX, "dense": AttentionBackend.DENSE}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(kernel: str, length: int, args, device, dtype, warmup: int, repeats: int) -> dict:
    shapes = [(1, args.heads, length, args.head_dim)] + [
        (1, args.kv_heads, length, args.head_dim)
    ] * 4  # q, k_ctx, v_ctx, k_noisy, v_noisy
    backward = device.type == "cuda" or kernel == "dense"
    row = {"kernel": kernel, "L": length, "passes": "fwd+bwd" if backward else "fwd"}
    try:
        inputs = [
            torch.randn(s, device=device, dtype=dtype, requires_grad=backward) for s in shapes
        ]

        def step():
            out = denoiser_attention(*inputs, args.block_size, backend=KERNELS[kernel])
            if backward:
                out.backward(torch.ones_like(out))
                for t in inputs:
                    t.grad = None
            _sync(device)

        seconds, _ = median_seconds(step, warmup=warmup, repeats=repeats)
        row["ms"] = seconds * 1e3
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
            step()
            row["peak_extra_mib"] = (torch.cuda.max_memory_allocated(device) - base) / 2**20
        else:
            row["peak_extra_mib"] = None  # no allocator statistics on the CPU
        row["status"] = "ok"
    except torch.cuda.OutOfMemoryError:
        row.update(ms=None, peak_extra_mib=None, status="oom")
    finally:
        inputs = None
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[2048, 8192, 32768])
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="tiny shapes, fp32, 1 repeat: checks the script runs (CPU CI)",
    )
    args = parser.parse_args()
    if args.smoke:
        args.lengths, args.heads, args.kv_heads, args.head_dim = [64, 128], 4, 2, 16
        args.warmup, args.repeats = 1, 1
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" and not args.smoke else torch.float32
    rows = [
        measure(kernel, length, args, device, dtype, args.warmup, args.repeats)
        for length in args.lengths
        for kernel in KERNELS
    ]

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(
        f"denoiser attention, S={args.block_size}, heads={args.heads}/{args.kv_heads}, "
        f"head_dim={args.head_dim}, {str(dtype).removeprefix('torch.')}, device: {name}"
    )
    print(f"{'L':>7} {'kernel':>6} {'passes':>8} {'ms':>10} {'peak MiB':>10} {'status':>6}")
    for r in rows:
        ms = "-" if r["ms"] is None else f"{r['ms']:.2f}"
        mib = "-" if r["peak_extra_mib"] is None else f"{r['peak_extra_mib']:.0f}"
        print(f"{r['L']:>7} {r['kernel']:>6} {r['passes']:>8} {ms:>10} {mib:>10} {r['status']:>6}")
    print(
        json.dumps(
            {
                "benchmark": "attention",
                "device": name,
                "dtype": str(dtype).removeprefix("torch."),
                "block_size": args.block_size,
                "heads": args.heads,
                "kv_heads": args.kv_heads,
                "head_dim": args.head_dim,
                "rows": rows,
            }
        )
    )


if __name__ == "__main__":
    main()
