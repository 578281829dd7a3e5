"""The export row of ``scripts/gpu_check.py``: on a GPU host, ``export-hf`` of the check's
stage-2 checkpoint must put no model tensor on the GPU (it converts on the CPU, shard by shard),
and a context-only load of that export on the GPU (``load_for_decoding(..., context_only=True)``)
must hold no denoiser weight (its weights under 0.6 × the whole model's) and decode AR token for
token like the whole model there; so must a context-only load of the trainer checkpoint itself
against the whole Megatron model.

The orchestrator imports this module, so it uses the standard library at import time; run as a
script it is the row's process and prints one JSON line::

    python scripts/gpu_check_export.py CHECKPOINT OUT [--new-tokens N]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

SCRIPT = "scripts/gpu_check_export.py"
NAME = "export-hf on the CPU + context-only AR load"
GPU_BYTES_ALLOWED = 64 * 2**20
"""What the export may allocate on the GPU: the process group's small object collectives (the
checkpoint loader's planning) go through NCCL; no model tensor may."""


def step(ctx, checkpoint: Path, run, record) -> None:
    """The row (``ctx``, ``run``, ``record``: ``scripts/gpu_check_report.py``'s ``Context``,
    ``run``, ``record``)."""
    start = time.perf_counter()
    argv = [sys.executable, SCRIPT, str(checkpoint), str(ctx.out / "export")]
    rc, tail = run(ctx, "export", [*argv, "--new-tokens", str(ctx.args.new_tokens)], 600)
    if rc != 0:
        record(ctx, NAME, False, start, f"exit {rc}: {tail.splitlines()[-1] if tail else ''}")
        return
    result = json.loads(tail.splitlines()[-1])
    ok = (
        result["export_gpu_bytes"] < GPU_BYTES_ALLOWED
        and result["context_bytes"] < 0.6 * result["whole_bytes"]
        and result["denoiser_on_meta"]
        and result["same_ar"]
        and result["checkpoint_same_ar"]
    )
    record(
        ctx,
        NAME,
        ok,
        start,
        f"export {result['export_s']:.0f} s, GPU bytes during it {result['export_gpu_bytes']}; "
        f"context-only on {result['device']}: weights {result['context_bytes'] / 2**20:,.0f} MiB "
        f"vs whole model {result['whole_bytes'] / 2**20:,.0f} MiB, AR "
        + ("same tokens" if result["same_ar"] else "DIFFERENT tokens")
        + "; trainer checkpoint context-only: AR "
        + ("same tokens" if result["checkpoint_same_ar"] else "DIFFERENT tokens"),
    )


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint")
    p.add_argument("out")
    p.add_argument("--new-tokens", type=int, default=32)
    args = p.parse_args(argv)
    import torch

    from twotower_train import distributed
    from twotower_train.convert.commands import export_checkpoint
    from twotower_train.inference import modes
    from twotower_train.inference.load import load_for_decoding

    cuda = torch.cuda.is_available()
    device = distributed.device()

    def allocated() -> int:
        return torch.cuda.max_memory_allocated() if cuda else 0

    def held(model) -> int:
        """Bytes of the model's weights that have memory (not on the meta device)."""
        tensors = [*model.parameters(), *model.buffers()]
        return sum(t.numel() * t.element_size() for t in tensors if t.device.type != "meta")

    start = time.perf_counter()
    export_checkpoint(args.checkpoint, args.out, overwrite=True)
    export_s, export_bytes = time.perf_counter() - start, allocated()
    prompts = [[4 + (7 * i + j) % 200 for j in range(8 + 3 * i)] for i in range(2)]
    config = modes.build_config("ar", max_new_tokens=args.new_tokens)
    ar_only = load_for_decoding(args.out, context_only=True, device=device).model
    context_bytes = held(ar_only)
    tokens = modes.generate(ar_only, prompts, "ar", config).tokens
    meta = ar_only.denoiser_device == torch.device("meta")
    del ar_only
    whole = load_for_decoding(args.out, device=device).model
    whole_bytes = held(whole)
    same_ar = modes.generate(whole, prompts, "ar", config).tokens == tokens
    del whole
    # The trainer checkpoint itself, context-only against whole (Megatron's AR on the device).
    megatron = load_for_decoding(args.checkpoint, context_only=True, device=device).model
    ar_only_tokens = modes.generate(megatron, prompts, "ar", config).tokens
    meta = meta and megatron.denoiser_device == torch.device("meta")
    del megatron
    megatron = load_for_decoding(args.checkpoint, device=device).model
    checkpoint_same = modes.generate(megatron, prompts, "ar", config).tokens == ar_only_tokens
    result = {
        "device": str(device),
        "export_s": export_s,
        "export_gpu_bytes": export_bytes,
        "context_bytes": context_bytes,
        "whole_bytes": whole_bytes,
        "denoiser_on_meta": meta,
        "same_ar": same_ar,
        "checkpoint_same_ar": checkpoint_same,
    }
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
