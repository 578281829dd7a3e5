"""The decoding rows of ``scripts/gpu_check.py``: batch-1 tokens/s of AR, mask diffusion
(γ = 0.8) and speculative decoding, eager and compiled, with ms per AR step and per denoiser
block forward — through ``benchmarks/generation.py`` with ``--device`` (cuda when the host has
it, else the CPU: the same rows run in a CPU dry run).

* per trained demo model (``--demo-model DIR``, repeatable: a demo run's HF export
  ``runs/demo/hf`` and/or its stage-2 checkpoint folder; default ``runs/demo/hf`` if it is
  there, else the row is a SKIP saying how to add one);
* a Nano-shaped MoE proxy (:data:`PROXY`): a randomly initialised two-tower model with the
  Nano's widths (hidden 2688, 128 experts top-6 of FFN 1856, shared expert 3712, Mamba 64 × 64
  heads, state 128, attention 32 heads / 2 KV groups, vocab 131072) but 5 layers, in bf16 on
  the GPU (about 14 GB). Random weights: it measures the cost of each kind of forward, not
  acceptance (diffusion and speculative commit about one token per forward).

The orchestrator imports this module, so it uses the standard library at import time; run as a
script it is the benchmark process of one row::

    python scripts/gpu_check_decoding.py [--proxy] [--compile-mode MODE] -- BENCHMARK-ARGS

``--compile-mode`` is ``torch.compile``'s mode for the compiled variant (default
``reduce-overhead`` on CUDA — CUDA graphs — and inductor's default elsewhere). A CPU dry run of
the proxy row with tiny sizes (what ``tests/inference/test_gpu_check_decoding.py`` runs)::

    python scripts/gpu_check_decoding.py --proxy --tiny -- --smoke --out /tmp/proxy \\
        --batch-sizes 1 --gammas 0.8 --max-new-tokens 8 --cost-repeats 2
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

DEFAULT = Path("runs/demo/hf")
ROWS = ("AR", "diffusion γ=0.8", "speculative")
SCRIPT = "scripts/gpu_check_decoding.py"
REPO = Path(__file__).resolve().parents[1]
PROXY = {"pattern": "MEM*E", "num_experts": 128}
"""Overrides of the ``nano_proxy`` preset (the Nano's widths and numerics, the token dispatcher
the check's training rows run) for the proxy row: 5 layers, the Nano's 128 experts."""
PROXY_NEW_TOKENS = 32
"""New tokens per prompt of the proxy row at most: random weights make diffusion take one
denoiser forward per token, and the row must fit the check's stage timeout."""
TINY_PROXY = {"pattern": "MEM*E", "num_experts": 8}
"""Overrides of the ``tiny`` preset for the CPU dry run of the same code."""


def models(given: list[str] | None, repo: Path) -> list[Path]:
    """The demo models to benchmark (absolute), or [] when there is none."""
    if given:
        return [Path(m).resolve() for m in given]
    default = repo / DEFAULT
    return [default] if (default / "config.json").is_file() else []


def _benchmark_args(out: Path, cuda: bool, new_tokens: int) -> list[str]:
    """Batch 1, γ = 0.8, eager and compiled, median of 3 (modes interleaved)."""
    return [
        "--out",
        str(out),
        "--device",
        "cuda" if cuda else "cpu",
        "--batch-sizes",
        "1",
        "--gammas",
        "0.8",
        "--max-new-tokens",
        str(new_tokens),
        "--repeats",
        "3",
        "--cost-repeats",
        "10",
        "--compile",
    ]


def command(model: Path, out: Path, cuda: bool, new_tokens: int) -> list[str]:
    """The benchmark run of one trained model."""
    args = ["--model", str(model), *_benchmark_args(out, cuda, new_tokens)]
    return [sys.executable, SCRIPT, "--", *args]


def proxy_command(out: Path, cuda: bool, new_tokens: int) -> list[str]:
    """The benchmark run of the Nano-shaped MoE proxy (random weights, built on the device)."""
    return [
        sys.executable,
        SCRIPT,
        "--proxy",
        "--",
        "--smoke",
        *_benchmark_args(out, cuda, new_tokens),
    ]


def summary(result_file: Path) -> str:
    """One table cell from the benchmark's ``result.json``: tok/s and × AR per mode and
    variant, ms per AR step and per denoiser block forward, or why compiling failed."""
    report = json.loads(result_file.read_text())
    parts = []
    for variant in ("eager", "compiled"):
        rows = {r["name"].split(" [")[0]: r for r in report["results"] if r["variant"] == variant}
        if not rows:
            continue
        cells = [
            f"{name} {rows[name]['tokens_per_s_batch1']:,.0f}"
            + ("" if name == "AR" else f" ({rows[name]['speedup_vs_ar_batch1']:.2f}× AR)")
            for name in ROWS
            if name in rows
        ]
        ms = report["forward_ms"][variant]["batch1"]
        label = variant if variant == "eager" else f"compiled ({report.get('compile_mode')})"
        parts.append(
            f"{label}: " + ", ".join(cells) + f" tok/s; AR step {ms['ar_step']:.2f} ms, "
            f"denoiser block {ms['denoiser_block']:.2f} ms"
        )
    if report.get("compile_error"):
        parts.append(f"compile failed: {report['compile_error']}")
    return "; ".join(parts)


def step(ctx, cuda: bool, run, record) -> None:
    """The decoding rows of the check (``ctx``, ``run`` and ``record`` are
    ``scripts/gpu_check_report.py``'s ``Context``, ``run`` and ``record``): each demo model, then
    the proxy — which the CPU dry run runs at tiny sizes."""
    import time

    found = models(ctx.args.demo_model, REPO)
    runs = [(f"decoding tok/s, batch 1: {model.name}", model) for model in found]
    if not found:
        record(
            ctx,
            "decoding tok/s (demo model)",
            None,
            time.perf_counter(),
            "no runs/demo/hf; pass --demo-model",
        )
    proxy = "random, bf16" if cuda else "tiny sizes, fp32: the CPU dry run"
    runs.append((f"decoding tok/s, batch 1: Nano-shaped MoE proxy ({proxy})", None))
    for i, (name, model) in enumerate(runs):
        start, out = time.perf_counter(), ctx.out / f"decoding_{i}"
        if model is not None:
            argv = command(model, out, cuda, ctx.args.new_tokens)
        else:
            argv = proxy_command(out, cuda, min(ctx.args.new_tokens, PROXY_NEW_TOKENS))
            if not cuda:  # the dry run: the same code at tiny sizes, eager only
                argv = [a for a in argv if a != "--compile"]
                argv.insert(argv.index("--"), "--tiny")
        rc, tail = run(ctx, f"decoding_{i}", argv, ctx.args.stage_timeout)
        detail = summary(out / "result.json") if rc == 0 else f"exit {rc}: {tail[-200:]}"
        record(ctx, name, rc == 0, start, detail)


def proxy_model(tiny: bool, device: str | None):
    """(LoadedModel, prompts) of the proxy: random weights, bf16 on a GPU (fp32 on the CPU),
    built where it runs (Megatron builds on the current GPU under CUDA)."""
    import generation  # benchmarks/ (on sys.path from main)
    import torch

    from twotower_train import distributed
    from twotower_train.inference.load import place
    from twotower_train.model.config import preset
    from twotower_train.model.two_tower import TwoTowerModel

    distributed.initialize(seed=0)
    cfg = preset("tiny", **TINY_PROXY) if tiny else preset("nano_proxy", **PROXY)
    cuda = torch.cuda.is_available() and (device or "cuda").startswith("cuda")
    dtype = torch.bfloat16 if cuda else torch.float32
    model = TwoTowerModel.build(cfg, params_dtype=dtype).eval()
    model = place(distributed.to_device(model), device)
    return generation.random_model(model, cfg, (24, 17))


def main(argv: list[str] | None = None) -> dict:
    """One benchmark process: ``benchmarks/generation.py``'s ``main`` with the compile mode set
    and, with ``--proxy``, the proxy model in place of its ``--smoke`` model."""
    argv = sys.argv[1:] if argv is None else argv
    own, rest = (
        (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    )
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--proxy", action="store_true", help="the Nano-shaped MoE proxy (with --smoke)")
    p.add_argument("--tiny", action="store_true", help="the proxy at tiny sizes (CPU dry run)")
    p.add_argument("--compile-mode", help="torch.compile mode of the compiled variant")
    args = p.parse_args(own)
    sys.path.insert(0, str(REPO / "benchmarks"))
    import functools

    import generation
    import torch

    from twotower_train.atomic_write import write_text
    from twotower_train.decoding.compiled import compiled

    device = rest[rest.index("--device") + 1] if "--device" in rest else None
    cuda = torch.cuda.is_available() and (device or "cuda").startswith("cuda")
    mode = args.compile_mode or ("reduce-overhead" if cuda else "default")
    generation.compiled = functools.partial(compiled, mode=mode)
    if args.proxy:
        generation._smoke_model = lambda: proxy_model(args.tiny, device)
    report = generation.main(rest)
    report["compile_mode"] = mode
    if args.proxy:
        report["model"] = "Nano-shaped MoE proxy" + (" (tiny)" if args.tiny else "")
    out = Path(rest[rest.index("--out") + 1])
    write_text(out / "result.json", json.dumps(report) + "\n")
    return report


if __name__ == "__main__":
    main()
