"""``twotower-generate``: continue prompts with any generation mode, streaming each committed
block (docs/inference.md).

    echo "The city is located on the" | .venv/bin/twotower-generate \\
        --model runs/demo/stage2/checkpoints --mode mask_diffusion --max-new-tokens 32

Prompts come from ``--prompt`` (repeatable) or a file with one prompt per line (``--prompts``;
``-`` = stdin, the default). ``--model`` is a two-tower trainer checkpoint or a Hugging Face
export folder. With ``--batch-size 1`` (the default) each continuation is printed as its blocks
are committed; larger batches print one ``[i] text`` line per row and committed block. The last
line reports tokens, wall time, tokens/s and tokens per forward.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")  # megatron's jit_fuser would compile on CPU

from twotower_train.cli import run_tool  # noqa: E402
from twotower_train.errors import UserError  # noqa: E402

TOOL = "twotower-generate"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line through run_tool, not usage + message
        raise UserError(f"{message} (see {TOOL} --help)")


def _parser() -> argparse.ArgumentParser:
    from twotower_train.inference.modes import MODES, user_knobs

    p = _Parser(prog=TOOL, description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="two-tower checkpoint or HF export folder")
    p.add_argument("--tokenizer", help="tokenizer folder (default: the model's)")
    p.add_argument(
        "--backbone",
        metavar="DIR",
        help="stage-2 checkpoint: its stage-1 backbone checkpoint (default: where it recorded it)",
    )
    p.add_argument("--mode", default="mask_diffusion", choices=list(MODES))
    p.add_argument("--prompt", action="append", help="a prompt (repeatable)")
    p.add_argument("--prompts", default="-", help="file with one prompt per line; - = stdin")
    p.add_argument(
        "--truncate-prompts",
        action="store_true",
        help="keep the last tokens of a prompt too long for the model's context (default: refuse)",
    )
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--seed", type=int, default=0, help="for temperature > 0")
    p.add_argument(
        "--device", help="where the model runs, e.g. cuda, cuda:1 or cpu (default: as loaded)"
    )
    p.add_argument(
        "--denoiser-device",
        help="put the denoiser tower there instead (two GPUs: --device cuda:0 "
        "--denoiser-device cuda:1)",
    )
    p.add_argument(
        "--context-only",
        action="store_true",
        help="load only the context tower and its head (--mode ar on one GPU)",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="run the decoding forwards under torch.compile (off by default: "
        "docs/decoding_speed.md)",
    )
    knobs = p.add_argument_group(
        "mode knobs (defaults: the mode's config; mask diffusion's block size and steps: the "
        "block size the model was trained at)"
    )
    for name, kind in user_knobs().items():
        knobs.add_argument(f"--{name.replace('_', '-')}", dest=name, type=kind)
    return p


def _read_prompts(args) -> list[str]:
    if args.prompt:
        return args.prompt
    if args.prompts == "-":
        if sys.stdin.isatty():
            print(
                f"{TOOL}: reading prompts from the terminal, one per line; end with Ctrl-D "
                "(or pass --prompt TEXT / --prompts FILE)",
                file=sys.stderr,
                flush=True,
            )
        try:
            lines = sys.stdin.buffer.read().decode("utf-8").splitlines()
        except UnicodeDecodeError as error:
            raise UserError(
                f"stdin is not UTF-8 text ({error.reason} at byte {error.start}); "
                "give the prompts as UTF-8"
            ) from None
    else:
        try:
            with open(args.prompts, encoding="utf-8") as f:
                lines = f.read().splitlines()
        except OSError as error:
            raise UserError(f"cannot read --prompts {args.prompts}: {error.strerror}") from None
        except UnicodeDecodeError as error:
            raise UserError(
                f"--prompts {args.prompts} is not UTF-8 text ({error.reason} at byte "
                f"{error.start}); convert it, e.g. iconv -t UTF-8"
            ) from None
    prompts = [line for line in lines if line.strip()]
    if not prompts:
        raise UserError("no prompts: give --prompt TEXT or a non-empty --prompts file / stdin")
    return prompts


class _Stream:
    """Prints each row's newly committed text (decoding the whole row, so multi-token
    characters come out whole)."""

    def __init__(self, tokenizer, first: int, inline: bool):
        self.tokenizer, self.first, self.inline = tokenizer, first, inline
        self.printed: dict[int, str] = {}

    def __call__(self, row: int, new: list[int], tokens: list[int]) -> bool:
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        delta = text[len(self.printed.get(row, "")) :]
        self.printed[row] = text
        if self.inline:
            print(delta, end="", flush=True)
        else:
            print(f"[{self.first + row}] {delta!r}", flush=True)
        return False


def _main(argv: list[str] | None) -> None:
    args = _parser().parse_args(argv)
    if args.batch_size <= 0:
        raise UserError(f"--batch-size={args.batch_size} must be positive")
    if args.context_only and args.mode != "ar":
        raise UserError(f"--context-only runs --mode ar only, not --mode {args.mode}")
    if args.context_only and args.denoiser_device:
        raise UserError("--context-only loads no denoiser; drop --denoiser-device")

    import torch

    import twotower_train  # noqa: F401  (CPU compatibility)
    from twotower_train.decoding.compiled import enable_dynamo
    from twotower_train.inference import modes
    from twotower_train.inference.load import load_for_decoding

    knobs = {name: getattr(args, name) for name in modes.user_knobs()}
    knobs = {name: value for name, value in knobs.items() if value is not None}
    if args.compile:  # this entry point disables dynamo unless asked (megatron's jit_fuser)
        enable_dynamo()
        knobs["compile"] = True
    modes.build_config(args.mode, **knobs)  # bad knobs fail before the model loads
    prompts = _read_prompts(args)
    loaded = load_for_decoding(
        args.model,
        args.tokenizer,
        backbone=args.backbone,
        device=args.device,
        denoiser_device=args.denoiser_device,
        context_only=args.context_only,
        options=("--tokenizer ", "--backbone "),
    )
    knobs = {
        **loaded.sampler_ids(),
        **modes.trained_defaults(args.mode, loaded.block_size),
        **knobs,
    }
    if "mask_token_id" in modes.knobs(args.mode):
        knobs["mask_token_id"] = loaded.mask_token_id
    config = modes.build_config(args.mode, **knobs)
    generator = torch.Generator(modes.sampling_device(loaded.model, args.mode))
    generator.manual_seed(args.seed)
    ids = [loaded.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    if any(not i for i in ids):
        raise UserError("a prompt encodes to no tokens; give non-empty prompts")
    ids = _fit_context(ids, loaded.max_length, config.max_new_tokens, args.truncate_prompts)

    totals = {"tokens": 0, "context": 0, "denoiser": 0, "accepted": 0, "verify": 0}
    start = time.perf_counter()
    for first in range(0, len(ids), args.batch_size):
        batch = ids[first : first + args.batch_size]
        inline = len(batch) == 1
        if inline:
            print(prompts[first], end="", flush=True)
        stream = _Stream(loaded.tokenizer, first, inline)
        out = modes.generate(loaded.model, batch, args.mode, config, generator, on_commit=stream)
        if inline:
            print(flush=True)
        totals["tokens"] += out.generated
        totals["context"] += out.row_context_forwards
        totals["denoiser"] += out.row_denoiser_forwards
        totals["accepted"] += getattr(out, "accepted", 0)
        totals["verify"] += getattr(out, "verify_forwards", 0)
    seconds = time.perf_counter() - start
    print(_summary(args.mode, len(prompts), seconds, totals), flush=True)


def _fit_context(ids: list[list[int]], max_length: int, new: int, truncate: bool):
    """Prompts that leave room for generation in the model's context (``max_length`` tokens):
    refused, or with ``--truncate-prompts`` cut to their last ``max_length - new`` tokens."""
    room = max(1, max_length - new)
    longest = max(range(len(ids)), key=lambda i: len(ids[i]))
    if len(ids[longest]) + new <= max_length:
        return ids
    if not truncate:
        raise UserError(
            f"prompt {longest + 1} has {len(ids[longest])} tokens; with --max-new-tokens {new} it "
            f"does not fit the model's context of {max_length} tokens; shorten it, lower "
            "--max-new-tokens, or pass --truncate-prompts to keep its last tokens"
        )
    return [row[-room:] for row in ids]


def _summary(mode: str, prompts: int, seconds: float, t: dict[str, int]) -> str:
    parts = [
        f"mode={mode}",
        f"prompts={prompts}",
        f"tokens={t['tokens']}",
        f"time={seconds:.2f}s",
        f"tokens/s={t['tokens'] / seconds:.1f}",
        f"tokens/(context+denoiser) forward={t['tokens'] / (t['context'] + t['denoiser']):.2f}",
    ]
    if t["denoiser"]:
        parts.append(f"tokens/denoiser forward={t['tokens'] / t['denoiser']:.2f}")
    if t["verify"]:
        parts.append(f"accepted/verify forward={t['accepted'] / t['verify']:.2f}")
    return "# " + " ".join(parts)


def main(argv: list[str] | None = None) -> None:
    run_tool(TOOL, _main, argv)
