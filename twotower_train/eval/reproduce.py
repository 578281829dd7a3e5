"""The card's headline in miniature, by one command: data → stage 1 → stage 2 → export → eval.

    .venv/bin/twotower-reproduce                          # recipe mini_repro_cpu, runs/mini_repro
    .venv/bin/twotower-reproduce --recipe mini_repro --out runs/mini_repro_gpu   # one GPU

Stages (each one's wall time goes into the results):

1. ``data`` — the reasoning task + offline text corpus and its tokenizer
   (:func:`data_tools.repro_corpus.prepare_repro_data`) under ``OUT/data``;
2. ``stage1`` — AR pretraining of the backbone (recipe ``RECIPE``) under ``OUT/stage1``;
3. ``stage2`` — the denoiser curriculum S=32 → S=32 (phase-2 blend) → S=16 (recipe
   ``RECIPE_twotower``) from the stage-1 checkpoint, under ``OUT/stage2``;
4. ``export`` — the final checkpoint as a Hugging Face folder ``OUT/hf``;
5. ``eval`` — on held-out task problems, through the export: AR greedy, mock-AR, mask diffusion
   at each γ (S = 16, 16 steps per block) and speculative decoding — exact match, quality
   retained (mode / AR), AR-tower NLL of the continuations, tokens per denoiser forward,
   tokens/s; and the denoiser's masked-token accuracy against the unigram baseline
   (:mod:`~twotower_train.eval.masked_accuracy`).

Writes ``OUT/results.json`` (command, machine, wall times, every number), ``OUT/results.md``
and ``OUT/tradeoff.png`` (:mod:`~twotower_train.eval.results`); ``--results-page`` writes the
page (and its plot) somewhere else too. Re-running resumes: the data and the training stages
reuse what is finished, the export and the evaluation are skipped when their inputs and
settings are unchanged (``OUT/stages.json``). ``--set``/``--stage1-set``/``--stage2-set`` take
Hydra overrides (``model=tiny``, ``curriculum.phases.0.steps=100``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

from twotower_train.atomic_write import atomic_path, write_text
from twotower_train.cli import INTERRUPTED_EXIT, add_debug_flag, run_tool

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")  # megatron's jit_fuser would compile on CPU

TOOL = "twotower-reproduce"


def _arguments(argv):
    p = argparse.ArgumentParser(prog=TOOL, description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/mini_repro", help="folder for every stage's output")
    p.add_argument("--recipe", default="mini_repro_cpu",
                   help="stage-1 recipe; stage 2 uses RECIPE_twotower")
    p.add_argument("--set", dest="common", action="append", default=[], metavar="KEY=VALUE",
                   help="Hydra override for both stages (repeatable)")
    p.add_argument("--stage1-set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--stage2-set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--train-problems", type=int, default=60_000)
    p.add_argument("--heldout-problems", type=int, default=500)
    p.add_argument("--task", action="append", default=[], metavar="FIELD=INT",
                   help="reasoning-task setting (TaskConfig field, e.g. max_value=20)")
    p.add_argument("--eval-problems", type=int, default=100, help="held-out problems scored")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--batch", type=int, default=8, help="prompts per generate call")
    p.add_argument("--gammas", default="0.5,0.7,0.8,0.9,0.95")
    p.add_argument("--results-page", help="also write the results page here (plot beside it)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    add_debug_flag(p)
    args = p.parse_args(argv)
    if min(args.eval_problems, args.max_new_tokens, args.batch) < 1:
        p.error("--eval-problems, --max-new-tokens and --batch must be positive")
    try:
        args.gammas = [float(g) for g in args.gammas.split(",")]
    except ValueError:
        p.error(f"--gammas must be comma-separated numbers, got {args.gammas!r}")
    return args


def _task_config(fields: list[str]):
    from data_tools.reasoning_task import TaskConfig
    from twotower_train.data.errors import DataError

    values = {}
    for item in fields:
        key, _, value = item.partition("=")
        if key not in TaskConfig.__dataclass_fields__ or not value.lstrip("-").isdigit():
            raise DataError(f"--task {item!r}: expected FIELD=INT with FIELD one of "
                            f"{', '.join(TaskConfig.__dataclass_fields__)}")
        values[key] = int(value)
    return TaskConfig(**values)


class _Stages:
    """``OUT/stages.json``: per stage, its wall time and the inputs it ran with, so a re-run
    skips what is done and still reports what the stage cost when it ran."""

    def __init__(self, out: Path):
        self.path = out / "stages.json"
        self.record = json.loads(self.path.read_text()) if self.path.exists() else {}

    def done(self, name: str, inputs: dict) -> bool:
        return self.record.get(name, {}).get("inputs") == inputs

    def finish(self, name: str, inputs: dict, seconds: float) -> None:
        self.record[name] = {"inputs": inputs, "seconds": seconds}
        write_text(self.path, json.dumps(self.record, indent=1))

    def seconds(self) -> dict[str, float]:
        return {name: r["seconds"] for name, r in self.record.items()}


def _train(recipe: str, overrides: list[str]):
    from twotower_train.training.main import run
    from twotower_train.training.recipes import load_config

    start = time.perf_counter()
    result = run(load_config(recipe, overrides))
    seconds = time.perf_counter() - start
    print(f"[reproduce] {recipe}: {result.outcome.replace('_', ' ')} in {seconds:.0f}s "
          f"-> {result.run_dir}", flush=True)
    if result.outcome not in ("finished", "already_done"):
        print(f"{TOOL}: {recipe} stopped early ({result.outcome}) with a checkpoint; the same "
              "command resumes", file=sys.stderr, flush=True)
        raise SystemExit(INTERRUPTED_EXIT if result.outcome == "interrupted" else 1)
    return result, seconds


def _check_recipes(args, common: list[str], out: Path) -> None:
    """Compose and validate both stages' recipes (curricula included) before any work."""
    from twotower_train.training.recipes import load_config

    load_config(args.recipe, common + args.stage1_set, check_data=False)
    load_config(f"{args.recipe}_twotower", common + args.stage2_set + [
        f"objective.backbone_checkpoint={out / 'stage1' / 'checkpoints'}"], check_data=False)


def _machine() -> dict:
    import torch

    cuda = torch.cuda.is_available()
    return {
        "cpus": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name() if cuda else f"CPU ({platform.machine()})",
        "host": platform.node(),
    }


def pipeline(argv: list[str] | None = None, command: str | None = None) -> dict:
    """Run (or resume) every stage with the command-line arguments ``argv``; return the report.
    ``command`` is what the results record as the command (default: this module's)."""
    args = _arguments(argv)
    import torch

    import twotower_train  # noqa: F401  (CPU compatibility)
    from data_tools.repro_corpus import prepare_repro_data
    from twotower_train import distributed

    task = _task_config(args.task)  # before anything is written
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    common = [f"data.root={out / 'data'}", *args.common]
    _check_recipes(args, common, out)  # a bad stage-2 setting fails now, not after stage 1
    out.mkdir(parents=True, exist_ok=True)
    stages = _Stages(out)
    command = command or "python -m twotower_train.eval.reproduce " + shlex.join(
        argv if argv is not None else sys.argv[1:])

    start = time.perf_counter()
    data = prepare_repro_data(out / "data", train_problems=args.train_problems,
                              heldout_problems=args.heldout_problems, task=task)
    data_inputs = {"train": args.train_problems, "heldout": args.heldout_problems,
                   "task": dataclasses.asdict(task)}
    if not stages.done("data", data_inputs):
        stages.finish("data", data_inputs, time.perf_counter() - start)
    s1_over = common + args.stage1_set + [f"output_dir={out / 'stage1'}"]
    s1, seconds = _train(args.recipe, s1_over)
    if s1.outcome == "finished" or "stage1" not in stages.record:
        stages.finish("stage1", {"overrides": s1_over}, seconds)
    s2_over = common + args.stage2_set + [
        f"output_dir={out / 'stage2'}", f"objective.backbone_checkpoint={s1.checkpoint_dir}"]
    s2, seconds = _train(f"{args.recipe}_twotower", s2_over)
    if s2.outcome == "finished" or "stage2" not in stages.record:
        stages.finish("stage2", {"overrides": s2_over}, seconds)
    distributed.shutdown()

    hf = out / "hf"
    export_inputs = {"checkpoint": str(s2.checkpoint_dir), "stage2": stages.record["stage2"]}
    if not (stages.done("export", export_inputs) and (hf / "config.json").is_file()):
        from twotower_train.convert.commands import export_checkpoint

        start = time.perf_counter()
        export_checkpoint(s2.checkpoint_dir, hf, tokenizer=data.tokenizer_dir, overwrite=True)
        stages.finish("export", export_inputs, time.perf_counter() - start)
        distributed.shutdown()
        print(f"[reproduce] exported -> {hf}", flush=True)

    eval_inputs = {"export": stages.record["export"], "problems": args.eval_problems,
                   "max_new_tokens": args.max_new_tokens, "batch": args.batch,
                   "gammas": args.gammas}
    results = out / "results.json"
    if stages.done("eval", eval_inputs) and results.is_file():
        report = json.loads(results.read_text())
        print(f"[reproduce] evaluation unchanged, reusing {results}")
    else:
        from twotower_train.eval.reproduce_eval import evaluate

        start = time.perf_counter()
        report = evaluate(hf, data, args)
        stages.finish("eval", eval_inputs, time.perf_counter() - start)
        report.update(command=command, machine=_machine(), wall_seconds=stages.seconds(),
                      out=str(out), recipe=args.recipe)
        write_text(results, json.dumps(report, indent=1))
    _publish(report, out, args.results_page)
    return report


def _publish(report: dict, out: Path, results_page: str | None) -> None:
    from twotower_train.eval.results import markdown_table, page, plot_tradeoff

    with atomic_path(out / "tradeoff.png", keep_suffix=True) as tmp:
        plot_tradeoff(report, tmp)
    write_text(out / "results.md", page(report, "tradeoff.png"))
    if results_page:
        target = Path(results_page)
        plot = target.with_name(target.stem + "_tradeoff.png")
        with atomic_path(plot, keep_suffix=True) as tmp:
            plot_tradeoff(report, tmp)
        text = target.read_text(encoding="utf-8") if target.exists() else ""
        write_text(target, _splice(text, page(report, plot.name)))
    print(markdown_table(report))
    print(f"[reproduce] results: {out / 'results.json'}, {out / 'results.md'}, "
          f"{out / 'tradeoff.png'}")


BEGIN, END = "<!-- reproduce:begin -->", "<!-- reproduce:end -->"


def _splice(text: str, generated: str) -> str:
    """``text`` with the part between the markers replaced by ``generated`` (a hand-written
    page keeps its prose; a page without markers gets them appended)."""
    block = f"{BEGIN}\n{generated}{END}"
    if BEGIN in text and END in text:
        return text[: text.index(BEGIN)] + block + text[text.index(END) + len(END):]
    return (text.rstrip() + "\n\n" if text.strip() else "") + block + "\n"


def main(argv: list[str] | None = None) -> None:
    run_tool(TOOL, pipeline, argv)


if __name__ == "__main__":
    main()
