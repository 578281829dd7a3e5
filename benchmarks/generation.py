"""Generation modes side by side on the same weights and prompts: speed, cost and quality.

For AR, mock-AR, mask diffusion at γ ∈ {0.5, 0.7, 0.8, 0.9, 0.95} (S = the block size the model trained at, S steps per block)
and speculative decoding, one run measures:

* tokens/s (wall) at batch 1 and batch 8 — modes interleaved per repeat, median over repeats;
* forwards per generated token (context + denoiser forwards of a row; docs/inference.md),
  tokens per context forward and per denoiser forward, and for speculative decoding the
  accepted draft tokens per verification forward;
* agreement with AR greedy: prompts whose whole continuation equals AR's, and the fraction of
  AR's tokens matched position by position;
* the AR (context) tower's mean NLL per token of each mode's continuation — a quality proxy;
* wall-clock speed-up over AR per batch size (tokens/s ÷ AR's tokens/s, same variant);
* the cost of one forward of each kind (:mod:`twotower_train.eval.forward_cost`): ms per AR
  step, per denoiser block forward, per context advance over a block and per speculative
  verify, at each batch size (median of ``--cost-repeats``, kinds interleaved), and for an MoE
  model the experts each forward touches per MoE layer;
* with ``--compile``, all of it again through the compiled view that ``compile=True`` decodes
  with (``advance`` and each denoising step under ``torch.compile`` on static caches; the
  prefill eager; rows marked ``[compiled]``, graphs and graph breaks counted); a model that
  does not compile says why in the report (``compile_error``) and runs eager only.

It prints a console table (machine, device, threads and load average in its first line) with
the per-forward costs under it, then ONE JSON line, and writes a PNG of the γ trade-off
(quality proxy vs tokens per forward, speculative, AR and mock-AR as points)::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/generation.py \\
        --model runs/demo/stage2/checkpoints --prompts runs/demo/data/task_heldout.jsonl \\
        --num-prompts 12 --max-new-tokens 32 --gammas 0.8 --repeats 5 --threads 1 \\
        --out runs/demo/generation_benchmark          # --model runs/demo/hf: the export
    .venv/bin/python benchmarks/generation.py --smoke --out /tmp/gen_bench   # tiny, seconds

``--smoke`` uses a random tiny model and random prompt ids: it checks the mechanics only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")

import torch  # noqa: E402

from twotower_train import distributed  # noqa: E402
from twotower_train.atomic_write import atomic_path, write_text
from twotower_train.decoding.compiled import compiled, enable_dynamo  # noqa: E402
from twotower_train.decoding.samplers import MaskDiffusionConfig  # noqa: E402
from twotower_train.eval import (
    forward_cost,  # noqa: E402
    throughput,  # noqa: E402
)
from twotower_train.eval.mode_comparison import agreement, ar_nll, mode_rows  # noqa: E402
from twotower_train.inference import modes  # noqa: E402
from twotower_train.inference.load import LoadedModel, load_for_decoding, place  # noqa: E402

PROMPTS = Path(__file__).with_name("prompts.txt")


def _arguments(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="two-tower checkpoint or HF export folder")
    p.add_argument(
        "--prompts",
        default=str(PROMPTS),
        help="one prompt per line, or a .jsonl whose lines have a 'prompt' (the demo's held-out "
        "task problems: runs/demo/data/task_heldout.jsonl)",
    )
    p.add_argument("--num-prompts", type=int, help="use the first N prompts (default: all)")
    p.add_argument("--smoke", action="store_true", help="random tiny model, few tokens")
    p.add_argument("--out", required=True, help="folder for generation.png and result.json")
    p.add_argument("--max-new-tokens", type=int, help="default 64 (--smoke: 8)")
    p.add_argument("--gammas", default="0.5,0.7,0.8,0.9,0.95")
    p.add_argument("--block-size", type=int, help="default: the block size the model trained at")
    p.add_argument("--steps-per-block", type=int, help="default: the block size")
    p.add_argument("--speculative-block-size", type=int)
    p.add_argument("--speculative-steps", type=int)
    p.add_argument("--speculative-threshold", type=float)
    p.add_argument("--batch-sizes", default="1,8")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument(
        "--compile",
        action="store_true",
        help="also measure every mode and forward with the model's methods under torch.compile",
    )
    p.add_argument("--cost-repeats", type=int, default=20, help="timed rounds per forward kind")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--device", help="where the model runs, e.g. cuda or cpu (default: as loaded)")
    args = p.parse_args(argv)
    if args.smoke == bool(args.model):
        p.error("give exactly one of --model PATH and --smoke")
    args.max_new_tokens = args.max_new_tokens or (8 if args.smoke else 64)
    return args


def _smoke_model() -> tuple[LoadedModel, list[list[int]]]:
    from twotower_train.model.config import preset
    from twotower_train.model.two_tower import TwoTowerModel

    distributed.initialize(seed=0)
    cfg = preset("tiny", pattern="M*E")
    return random_model(TwoTowerModel.build(cfg).eval(), cfg, (5, 9, 7, 3))


def random_model(model, cfg, lengths) -> tuple[LoadedModel, list[list[int]]]:
    """A randomly initialised ``model`` of config ``cfg`` as a ``LoadedModel``, with seeded
    random prompts of ``lengths`` tokens (the smoke run's and the GPU check's proxy)."""
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(4, cfg.vocab_size, (n,), generator=gen).tolist() for n in lengths]
    loaded = LoadedModel(
        model,
        None,
        cfg.eos_token_id,
        cfg.mask_token_id,
        cfg.pad_token_id,
        cfg.max_sequence_length,
        block_size=MaskDiffusionConfig.block_size,
    )
    return loaded, prompts


def _modes(args, loaded: LoadedModel) -> dict[str, tuple[str, dict]]:
    """Row name → (mode, knobs)."""
    return mode_rows(
        loaded.sampler_ids(),
        loaded.mask_token_id,
        args.max_new_tokens,
        gammas=[float(g) for g in args.gammas.split(",")],
        block_size=args.block_size or loaded.block_size,
        steps_per_block=args.steps_per_block,
        speculative={
            "block_size": args.speculative_block_size,
            "steps_per_block": args.speculative_steps,
            "confidence_threshold": args.speculative_threshold,
        },
    )


def _variants(args, loaded) -> tuple[dict, str | None]:
    """Variant name → model ("eager", and "compiled" with ``--compile``), and why compiling
    failed (None if it did not)."""
    variants = {"eager": loaded.model}
    if not args.compile:
        return variants, None
    enable_dynamo()  # this script disables it unless asked to compile
    model = compiled(loaded.model)  # what DecodeConfig(compile=True) decodes with
    try:  # compile (and check) every method once on a short run of each kind
        forward_cost.forward_costs(
            model, [[loaded.pad_token_id + 1] * 3], 4, loaded.mask_token_id, loaded.pad_token_id, 1
        )
    except Exception as error:  # noqa: BLE001 — any compiler failure is reported, not raised
        return variants, f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
    if not forward_cost.compile_stats()["unique_graphs"]:
        return variants, "torch.compile captured no graph (dynamo disabled?)"
    variants["compiled"] = model
    return variants, None


def _batch_prompts(prompts, batch):
    return (prompts * batch)[:batch]


def _row(name, variant, mode, config, generated, seconds, stats, agree, nll) -> dict:
    forwards = stats["context"] + stats["denoiser"]
    return {
        "name": name,
        "variant": variant,
        "mode": mode,
        "config": {k: v for k, v in vars(config).items() if k != "choice"},
        **{f"tokens_per_s_batch{b}": generated[b] / seconds[b] for b in generated},
        "forwards_per_token": forwards / stats["generated"],
        "tokens_per_forward": stats["generated"] / forwards,
        "tokens_per_context_forward": stats["generated"] / stats["context"],
        "accepted_per_verify": stats["accepted"] / stats["verify"] if stats["verify"] else None,
        "tokens_per_denoiser_forward": (
            stats["generated"] / stats["denoiser"] if stats["denoiser"] else None
        ),
        # The same without the tokens the context tower chose (a shifted denoiser's first
        # position of each block): what the denoiser itself commits per forward.
        "denoiser_tokens_per_denoiser_forward": (
            (stats["generated"] - stats["context_tokens"]) / stats["denoiser"]
            if stats["denoiser"]
            else None
        ),
        "exact_match_ar": agree[0],
        "token_agreement_ar": agree[1],
        "ar_nll": nll,
        "generated": stats["generated"],
    }


def measure(args, loaded, prompts) -> dict:
    rows = _modes(args, loaded)
    configs = {name: modes.build_config(mode, **knobs) for name, (mode, knobs) in rows.items()}
    batches = [int(b) for b in args.batch_sizes.split(",")]
    variants, compile_error = _variants(args, loaded)
    S = args.block_size or loaded.block_size
    ids = (S, loaded.mask_token_id, loaded.pad_token_id)
    costs = {
        variant: {
            f"batch{b}": forward_cost.forward_costs(
                model, _batch_prompts(prompts, b), *ids, repeats=args.cost_repeats
            )
            for b in batches
        }
        for variant, model in variants.items()
    }
    experts = forward_cost.experts_touched(loaded.model, prompts[:1], *ids)
    # Modes interleaved within each repeat, so a shared machine's load drift hits all alike.
    timed = throughput.time_modes(
        variants,
        {name: (mode, configs[name]) for name, (mode, _) in rows.items()},
        prompts,
        batches,
        args.repeats,
    )
    speedup = throughput.speedups(timed)
    reference = timed["eager", "AR", batches[0]].tokens
    results = []
    for variant in variants:
        for name, (mode, _) in rows.items():
            first = timed[variant, name, batches[0]]
            row = _row(
                name if variant == "eager" else f"{name} [{variant}]",
                variant,
                mode,
                configs[name],
                {b: timed[variant, name, b].stats["generated"] for b in batches},
                {b: timed[variant, name, b].median_seconds for b in batches},
                first.stats,
                agreement(first.tokens, reference),
                ar_nll(loaded.model, prompts, first.tokens, loaded.pad_token_id),
            )
            for b in batches:  # wall-clock speed-up over this variant's AR
                row[f"speedup_vs_ar_batch{b}"] = speedup[variant, name, b]
            results.append(row)
    return {
        "benchmark": "generation",
        "model": args.model or "smoke:tiny",
        "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} CPUs"
        + (f" {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""),
        "device": str(loaded.model.context_device),
        "threads": torch.get_num_threads(),
        "load_average": os.getloadavg()[0],
        "prompts": len(prompts),
        "max_new_tokens": args.max_new_tokens,
        "batch_sizes": batches,
        "repeats": args.repeats,
        "cost_repeats": args.cost_repeats,
        "block_size": S,
        "forward_ms": costs,
        "experts_touched": experts,
        "compile_error": compile_error,
        "compile_stats": forward_cost.compile_stats() if "compiled" in variants else None,
        # Methods whose compilation failed mid-run and fell back to eager (decoding/compiled.py).
        "compile_fallbacks": variants["compiled"].failures if "compiled" in variants else None,
        "results": results,
    }


def table(report: dict) -> str:
    batches = report["batch_sizes"]
    head = (
        f"{'mode':<32}"
        + "".join(f"{f'tok/s b{b}':>10}{f'×AR b{b}':>8}" for b in batches)
        + f"{'fwd/tok':>9}{'tok/ctx':>9}{'tok/den':>9}{'den/den':>9}{'exact':>7}{'agree':>7}"
        + f"{'AR NLL':>8}"
        f"{'acc/ver':>9}"
    )
    lines = [
        f"{report['machine']}, {report['device']}, {report['threads']} thread(s), load average "
        f"{report['load_average_start']:.2f} → {report['load_average']:.2f}; median of "
        f"{report['repeats']} (modes interleaved)",
        head,
        "-" * len(head),
    ]
    for r in report["results"]:
        per_den = r["tokens_per_denoiser_forward"]
        own = r["denoiser_tokens_per_denoiser_forward"]
        lines.append(
            f"{r['name']:<32}"
            + "".join(
                f"{r[f'tokens_per_s_batch{b}']:>10.1f}{r[f'speedup_vs_ar_batch{b}']:>8.2f}"
                for b in batches
            )
            + f"{r['forwards_per_token']:>9.2f}{r['tokens_per_context_forward']:>9.2f}"
            + (f"{per_den:>9.2f}" if per_den else f"{'-':>9}")
            + (f"{own:>9.2f}" if own else f"{'-':>9}")
            + f"{r['exact_match_ar']:>7.2f}{r['token_agreement_ar']:>7.2f}{r['ar_nll']:>8.3f}"
            + (
                f"{r['accepted_per_verify']:>9.2f}"
                if r["accepted_per_verify"] is not None
                else f"{'-':>9}"
            )
        )
    return "\n".join(lines + ["", forward_cost.cost_table(report)])


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, label in (
        (axes[0], "ar_nll", "AR-tower NLL / token (lower is better)"),
        (axes[1], "token_agreement_ar", "token agreement with AR greedy"),
    ):
        eager = [r for r in report["results"] if r["variant"] == "eager"]
        diffusion = [r for r in eager if r["mode"] == "mask_diffusion"]
        ax.plot(
            [r["tokens_per_forward"] for r in diffusion],
            [r[key] for r in diffusion],
            "o-",
            label="mask diffusion (γ)",
        )
        for r in diffusion:
            ax.annotate(
                f"{r['config']['confidence_threshold']:g}",
                (r["tokens_per_forward"], r[key]),
                textcoords="offset points",
                xytext=(4, 4),
                fontsize=8,
            )
        for r, marker in zip([r for r in eager if r["mode"] != "mask_diffusion"], ("s", "^", "*")):
            ax.plot(r["tokens_per_forward"], r[key], marker, markersize=10, label=r["name"])
        ax.set_xlabel("generated tokens per (context + denoiser) forward")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(
        f"{report['model']} — {report['prompts']} prompts × "
        f"{report['max_new_tokens']} tokens ({report['machine']})",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120, format="png")
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    args = _arguments(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.smoke:
        loaded, prompts = _smoke_model()
        loaded.model = place(loaded.model, args.device)
    else:
        loaded = load_for_decoding(args.model, device=args.device)
        lines = Path(args.prompts).read_text(encoding="utf-8").splitlines()
        lines = [line for line in lines if line.strip()]
        if args.prompts.endswith(".jsonl"):  # e.g. the demo's data/task_heldout.jsonl
            lines = [json.loads(line)["prompt"] for line in lines]
        lines = lines[: args.num_prompts]
        prompts = [loaded.tokenizer(line, add_special_tokens=False)["input_ids"] for line in lines]
    load_before = os.getloadavg()[0]
    report = {**measure(args, loaded, prompts), "load_average_start": load_before}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    line = json.dumps(report)
    # Written next to each other and renamed into place: a crash never leaves half a file.
    with atomic_path(out / "generation.png", keep_suffix=True) as tmp:
        plot(report, tmp)
    write_text(out / "result.json", line + "\n")
    print(table(report))
    print(line)
    return report


if __name__ == "__main__":
    main()
