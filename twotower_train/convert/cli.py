"""``twotower-convert``: Hugging Face folders ↔ trainer checkpoints.

    twotower-convert import-hf HF_DIR OUT_DIR [--tp N] [--ep N]        # nemotron_h -> stage 1
    twotower-convert export-hf CKPT OUT_DIR [--tokenizer TOK_DIR] [--backbone DIR]
                                                                       # checkpoint -> HF folder
    twotower-convert import-twotower HF_DIR OUT_DIR [--tp N] [--ep N]  # export -> stage 2

For example, on a CPU (the demo's final checkpoint; ``python -m twotower_train.convert`` is
the same command)::

    .venv/bin/twotower-convert export-hf runs/demo/stage2/checkpoints runs/demo/hf

An existing ``OUT_DIR`` is never touched unless ``--overwrite`` is given, and then it is replaced
atomically. A bad input prints one line ``twotower-convert: error: …`` and exits with code 2.
Imports at ``--tp``/``--ep`` > 1 run under ``torchrun --nproc-per-node N``.
"""

from __future__ import annotations

import argparse
import os
import time
import warnings

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")  # megatron's jit_fuser would compile on CPU
# megatron-core's import-time notices about optional GPU packages (as in the test settings).
warnings.filterwarnings("ignore", category=UserWarning, module=r"megatron\.")

TOOL = "twotower-convert"


def _size(text: str) -> int:
    units = {"KB": 2**10, "MB": 2**20, "GB": 2**30}
    for unit, factor in units.items():
        if text.upper().endswith(unit):
            return int(float(text[: -len(unit)]) * factor)
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=TOOL, description="Convert between Hugging Face folders and trainer checkpoints."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add_import(name: str, help_text: str, recipe: str) -> None:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("hf_dir", metavar="HF_DIR")
        sub.add_argument(
            "out_dir", metavar="OUT_DIR", help="run folder to create (OUT_DIR/checkpoints)"
        )
        sub.add_argument("--tp", type=int, default=1, help="tensor-parallel size of the checkpoint")
        sub.add_argument("--ep", type=int, default=1, help="expert-parallel size of the checkpoint")
        sub.add_argument(
            "--recipe",
            default=recipe,
            help=f"recipe recorded in the checkpoint, its model replaced (default: {recipe})",
        )
        sub.add_argument("--overwrite", action="store_true", help="replace an existing OUT_DIR")

    add_import(
        "import-hf",
        "a nemotron_h folder (Hub or save_pretrained layout) -> stage-1 checkpoint",
        "demo",
    )
    export = commands.add_parser(
        "export-hf",
        help="a trainer checkpoint (any TP/EP) -> two-tower HF folder (stage 2) or nemotron_h "
        "folder (stage 1)",
    )
    export.add_argument("checkpoint", metavar="CKPT", help="checkpoint root or iter_* folder")
    export.add_argument("out_dir", metavar="OUT_DIR")
    export.add_argument(
        "--tokenizer", metavar="TOK_DIR", help="tokenizer folder (default: the recipe's)"
    )
    export.add_argument(
        "--dtype", choices=["float32", "bfloat16"], help="default: the training precision"
    )
    export.add_argument(
        "--block-size", type=int, help="default sampling block size (default: last phase's)"
    )
    export.add_argument(
        "--backbone",
        metavar="DIR",
        help="stage 2: the stage-1 backbone checkpoint the run started from (default: where the "
        "checkpoint recorded it)",
    )
    export.add_argument("--max-shard-size", type=_size, default="5GB", help="e.g. 5GB, 200MB")
    export.add_argument("--overwrite", action="store_true", help="replace an existing OUT_DIR")
    add_import(
        "import-twotower",
        "a two-tower export folder -> stage-2 checkpoint (both towers)",
        "demo_twotower",
    )
    return parser


def _run(args: argparse.Namespace) -> None:
    import twotower_train  # noqa: F401  (CPU compatibility)
    from twotower_train import distributed
    from twotower_train.cli import is_rank_zero
    from twotower_train.convert import commands

    start = time.perf_counter()
    try:
        if args.command == "export-hf":
            out = commands.export_checkpoint(
                args.checkpoint,
                args.out_dir,
                tokenizer=args.tokenizer,
                dtype=args.dtype,
                block_size=args.block_size,
                max_shard_bytes=args.max_shard_size,
                overwrite=args.overwrite,
                backbone=args.backbone,
            )
        else:
            run = commands.import_hf if args.command == "import-hf" else (commands.import_twotower)
            out = run(
                args.hf_dir,
                args.out_dir,
                tp=args.tp,
                ep=args.ep,
                recipe=args.recipe,
                overwrite=args.overwrite,
            )
    finally:
        distributed.shutdown()
    if is_rank_zero():
        print(f"{TOOL}: wrote {out} in {time.perf_counter() - start:.1f}s", flush=True)


def main(argv: list[str] | None = None) -> None:
    from twotower_train.cli import run_tool

    args = build_parser().parse_args(argv)
    run_tool(TOOL, _run, args)
