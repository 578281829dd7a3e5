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
   retained (mode / AR), AR-tower NLL of the continuations, tokens per denoiser forward (a
   forward count: the card's "tokens / step"), and the wall-clock throughput: tokens/s at batch
   1 and 8 on the first ``--timing-prompts`` problems, modes interleaved, median of
   ``--timing-repeats``, and its ratio to AR's — the figure the card's 2.42× is
   (:mod:`~twotower_train.eval.throughput`); and the denoiser's masked-token accuracy against
   the unigram baseline (:mod:`~twotower_train.eval.masked_accuracy`).

Writes ``OUT/results.json`` (command, machine, wall times, every number), ``OUT/results.md``
and ``OUT/tradeoff.png`` (:mod:`~twotower_train.reproduce.results`); ``--results-page`` writes the
page (and its plot) somewhere else too. Re-running resumes: the data and the training stages
reuse what is finished, the export and the evaluation are skipped when their inputs and
settings are unchanged (``OUT/stages.json``). ``--set``/``--stage1-set``/``--stage2-set`` take
Hydra overrides (``model=tiny``, ``curriculum.phases.0.steps=100``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

from twotower_train.atomic_write import atomic_path, write_text
from twotower_train.cli import INTERRUPTED_EXIT
from twotower_train.reproduce.config import MODULE, TOOL, ReproduceConfig

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")  # megatron's jit_fuser would compile on CPU


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
    from twotower_train.training.cli import run
    from twotower_train.training.recipes import load_config

    start = time.perf_counter()
    result = run(load_config(recipe, overrides))
    seconds = time.perf_counter() - start
    print(
        f"[reproduce] {recipe}: {result.outcome.replace('_', ' ')} in {seconds:.0f}s "
        f"-> {result.run_dir}",
        flush=True,
    )
    if result.outcome not in ("finished", "already_done"):
        print(
            f"{TOOL}: {recipe} stopped early ({result.outcome}) with a checkpoint; the same "
            "command resumes",
            file=sys.stderr,
            flush=True,
        )
        raise SystemExit(INTERRUPTED_EXIT if result.outcome == "interrupted" else 1)
    return result, seconds


def _check_recipes(config: ReproduceConfig, common: list[str], out: Path) -> None:
    """Compose and validate both stages' recipes (curricula included) before any work."""
    from twotower_train.training.recipes import load_config

    load_config(config.recipe, common + [*config.stage1_set], check_data=False)
    load_config(
        f"{config.recipe}_twotower",
        common
        + [*config.stage2_set]
        + [f"objective.backbone_checkpoint={out / 'stage1' / 'checkpoints'}"],
        check_data=False,
    )


def _machine() -> dict:
    import torch

    cuda = torch.cuda.is_available()
    return {
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name() if cuda else f"CPU ({platform.machine()})",
        "host": platform.node(),
    }


def pipeline(argv: list[str] | None = None, command: str | None = None) -> dict:
    """Run (or resume) every stage with the command-line arguments ``argv``; return the report.
    ``command`` is what the results record as the command (default: ``python -m`` this
    package's)."""
    config = ReproduceConfig.from_argv(argv)  # before anything is written
    return run(
        config,
        command or f"python -m {MODULE} " + shlex.join(argv if argv is not None else sys.argv[1:]),
    )


def run(config: ReproduceConfig, command: str) -> dict:
    """Run (or resume) every stage of ``config``; return the report, recording ``command``."""
    import torch

    import twotower_train  # noqa: F401  (CPU compatibility)
    from data_tools.repro_corpus import prepare_repro_data
    from twotower_train import distributed

    if config.threads:
        torch.set_num_threads(config.threads)
    out = config.out
    common = [f"data.root={out / 'data'}", *config.common]
    _check_recipes(config, common, out)  # a bad stage-2 setting fails now, not after stage 1
    out.mkdir(parents=True, exist_ok=True)
    stages = _Stages(out)

    start = time.perf_counter()
    data = prepare_repro_data(
        out / "data",
        train_problems=config.train_problems,
        heldout_problems=config.heldout_problems,
        task=config.task,
    )
    data_inputs = {
        "train": config.train_problems,
        "heldout": config.heldout_problems,
        "task": dataclasses.asdict(config.task),
    }
    if not stages.done("data", data_inputs):
        stages.finish("data", data_inputs, time.perf_counter() - start)
    s1_over = common + [*config.stage1_set, f"output_dir={out / 'stage1'}"]
    s1, seconds = _train(config.recipe, s1_over)
    if s1.outcome == "finished" or "stage1" not in stages.record:
        stages.finish("stage1", {"overrides": s1_over}, seconds)
    s2_over = common + [
        *config.stage2_set,
        f"output_dir={out / 'stage2'}",
        f"objective.backbone_checkpoint={s1.checkpoint_dir}",
    ]
    s2, seconds = _train(f"{config.recipe}_twotower", s2_over)
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

    eval_inputs = {
        "export": stages.record["export"],
        "problems": config.eval_problems,
        "max_new_tokens": config.max_new_tokens,
        "batch": config.batch,
        "gammas": config.gammas,
        "timing": [config.timing_prompts, list(config.timing_batches), config.timing_repeats],
    }
    results = out / "results.json"
    if stages.done("eval", eval_inputs) and results.is_file():
        report = json.loads(results.read_text())
        print(f"[reproduce] evaluation unchanged, reusing {results}")
    else:
        from twotower_train.reproduce.evaluate import evaluate

        start = time.perf_counter()
        report = evaluate(hf, data, config)
        stages.finish("eval", eval_inputs, time.perf_counter() - start)
        report.update(
            command=command,
            machine=_machine(),
            wall_seconds=stages.seconds(),
            out=str(out),
            recipe=config.recipe,
        )
        write_text(results, json.dumps(report, indent=1))
    _publish(report, out, config.results_page)
    return report


def _publish(report: dict, out: Path, results_page: str | None) -> None:
    from twotower_train.reproduce.results import (
        card_table,
        markdown_table,
        masked_accuracy_line,
        page,
        plot_tradeoff,
        verdict,
    )

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
    print(
        f"{masked_accuracy_line(report)}\n\n{markdown_table(report)}\n\n{card_table(report)}"
        f"\n\n{verdict(report)}"
    )
    print(
        f"[reproduce] results: {out / 'results.json'}, {out / 'results.md'}, {out / 'tradeoff.png'}"
    )


BEGIN, END = "<!-- reproduce:begin -->", "<!-- reproduce:end -->"


def _splice(text: str, generated: str) -> str:
    """``text`` with the part between the markers replaced by ``generated`` (a hand-written
    page keeps its prose; a page without markers gets them appended)."""
    block = f"{BEGIN}\n{generated}{END}"
    if BEGIN in text and END in text:
        return text[: text.index(BEGIN)] + block + text[text.index(END) + len(END) :]
    return (text.rstrip() + "\n\n" if text.strip() else "") + block + "\n"
