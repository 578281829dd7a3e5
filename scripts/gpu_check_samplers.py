"""The samplers row of ``scripts/gpu_check.py``: mask diffusion (S = 16, γ = 0.8), mock-AR and AR
on the check's stage-2 checkpoint in bf16 on the device, tokens/s and tokens per denoiser
forward, then again with the towers placed on two handles of the device (``cuda:0``,
``cuda:0``): the tokens must be the same.

The orchestrator imports this module, so it uses the standard library at import time; run as a
script it is the row's process and prints one JSON line::

    python scripts/gpu_check_samplers.py CHECKPOINT [--new-tokens N]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

SCRIPT = "scripts/gpu_check_samplers.py"
NAME = "samplers (bf16)"


def step(ctx, checkpoint: Path, run, record) -> None:
    """The row (``ctx``, ``run``, ``record``: ``scripts/gpu_check_report.py``'s ``Context``,
    ``run``, ``record``)."""
    start = time.perf_counter()
    argv = [sys.executable, SCRIPT, str(checkpoint), "--new-tokens", str(ctx.args.new_tokens)]
    rc, tail = run(ctx, "samplers", argv, ctx.args.stage_timeout)
    if rc != 0:
        record(ctx, NAME, False, start, f"exit {rc}: {tail.splitlines()[-1]}")
        return
    result = json.loads(tail.splitlines()[-1])
    modes = "; ".join(
        f"{name} {m['tokens_per_s']:,.0f} tok/s"
        + (f" ({m['tokens_per_forward']:.2f}/denoiser fwd)" if m["tokens_per_forward"] else "")
        for name, m in result["modes"].items()
    )
    same = all(m["same_when_placed"] for m in result["modes"].values())
    record(
        ctx,
        NAME,
        same,
        start,
        f"{modes}; towers on {tuple(result['placed'])}: "
        f"{'same tokens' if same else 'DIFFERENT tokens'}",
    )


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint")
    p.add_argument("--new-tokens", type=int, default=64, help="per prompt and sampler")
    args = p.parse_args(argv)
    import torch

    from twotower_train import distributed
    from twotower_train.decoding import samplers as s
    from twotower_train.inference.load import load_trained_model

    new_tokens = args.new_tokens
    distributed.initialize(seed=0)
    here = distributed.device()
    model, cfg = load_trained_model(args.checkpoint, device=here, dtype=torch.bfloat16)
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
    result = {"placed": placed, "modes": results}
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
