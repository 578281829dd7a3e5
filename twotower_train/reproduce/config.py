"""``ReproduceConfig``: every setting of a reproduction run, built once from the command line and
validated there; the stages (:mod:`.pipeline`, :mod:`.evaluate`) read only this."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

from twotower_train.cli import add_debug_flag

if TYPE_CHECKING:
    from data_tools.reasoning_task import TaskConfig

TOOL = "twotower-reproduce"
MODULE = "twotower_train.reproduce"
"""``python -m MODULE`` runs the pipeline; the results record their command in that form."""
DESCRIPTION = (
    "The card's headline in miniature, by one command: data → stage 1 → stage 2 → export → eval."
)


@dataclasses.dataclass(frozen=True)
class ReproduceConfig:
    out: Path
    """Folder for every stage's output."""
    recipe: str
    """Stage-1 recipe; stage 2 uses ``RECIPE_twotower``."""
    common: tuple[str, ...]
    """Hydra overrides for both stages."""
    stage1_set: tuple[str, ...]
    stage2_set: tuple[str, ...]
    train_problems: int
    heldout_problems: int
    task: TaskConfig
    """The reasoning task's settings (``--task FIELD=INT``)."""
    eval_problems: int
    max_new_tokens: int
    batch: int
    gammas: list[float]
    results_page: str | None
    threads: int | None
    device: str | None = None
    """Where the evaluation decodes (``--device``; default: where the export loads, the CPU)."""
    timing_prompts: int = 16
    """The first N evaluated problems whose decoding is timed (``--timing-prompts``)."""
    timing_batches: tuple[int, ...] = (1, 8)
    """Batch sizes of the wall-clock timing (``--timing-batches``)."""
    timing_repeats: int = 3
    """Timed passes per mode and batch size, modes interleaved; the median counts."""

    @classmethod
    def from_argv(cls, argv: list[str] | None = None) -> ReproduceConfig:
        """Parse and check ``argv`` (default ``sys.argv[1:]``): an argument error exits 2 with
        argparse's message; a bad ``--task`` raises :class:`~twotower_train.data.errors.DataError`."""
        p = _parser()
        args = p.parse_args(argv)
        if min(args.eval_problems, args.max_new_tokens, args.batch) < 1:
            p.error("--eval-problems, --max-new-tokens and --batch must be positive")
        if min(args.timing_prompts, args.timing_repeats) < 1:
            p.error("--timing-prompts and --timing-repeats must be positive")
        try:
            gammas = [float(g) for g in args.gammas.split(",")]
        except ValueError:
            p.error(f"--gammas must be comma-separated numbers, got {args.gammas!r}")
        try:
            batches = tuple(int(b) for b in args.timing_batches.split(","))
        except ValueError:
            batches = ()
        if not batches or min(batches) < 1:
            p.error(
                f"--timing-batches must be comma-separated positive integers, "
                f"got {args.timing_batches!r}"
            )
        return cls(
            out=Path(args.out),
            recipe=args.recipe,
            common=tuple(args.common),
            stage1_set=tuple(args.stage1_set),
            stage2_set=tuple(args.stage2_set),
            train_problems=args.train_problems,
            heldout_problems=args.heldout_problems,
            task=_task_config(args.task),
            eval_problems=args.eval_problems,
            max_new_tokens=args.max_new_tokens,
            batch=args.batch,
            gammas=gammas,
            results_page=args.results_page,
            threads=args.threads,
            device=args.device,
            timing_prompts=args.timing_prompts,
            timing_batches=batches,
            timing_repeats=args.timing_repeats,
        )


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=TOOL, description=DESCRIPTION)
    p.add_argument("--out", default="runs/mini_repro", help="folder for every stage's output")
    p.add_argument(
        "--recipe", default="mini_repro_cpu", help="stage-1 recipe; stage 2 uses RECIPE_twotower"
    )
    p.add_argument(
        "--set",
        dest="common",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="Hydra override for both stages (repeatable)",
    )
    p.add_argument("--stage1-set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--stage2-set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--train-problems", type=int, default=60_000)
    p.add_argument("--heldout-problems", type=int, default=500)
    p.add_argument(
        "--task",
        action="append",
        default=[],
        metavar="FIELD=INT",
        help="reasoning-task setting (TaskConfig field, e.g. max_value=20)",
    )
    p.add_argument("--eval-problems", type=int, default=100, help="held-out problems scored")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--batch", type=int, default=8, help="prompts per generate call")
    p.add_argument("--gammas", default="0.5,0.7,0.8,0.9,0.95")
    p.add_argument(
        "--timing-prompts",
        type=int,
        default=16,
        help="time decoding on the first N evaluated problems (default 16)",
    )
    p.add_argument(
        "--timing-batches", default="1,8", help="batch sizes of the wall-clock timing (1,8)"
    )
    p.add_argument(
        "--timing-repeats",
        type=int,
        default=3,
        help="timed passes per mode and batch size, modes interleaved; median (default 3)",
    )
    p.add_argument("--results-page", help="also write the results page here (plot beside it)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    p.add_argument("--device", help="where the evaluation decodes, e.g. cuda (default: the CPU)")
    add_debug_flag(p)
    return p


def _task_config(fields: list[str]) -> TaskConfig:
    from data_tools.reasoning_task import TaskConfig
    from twotower_train.data.errors import DataError

    values = {}
    for item in fields:
        key, _, value = item.partition("=")
        if key not in TaskConfig.__dataclass_fields__ or not value.lstrip("-").isdigit():
            raise DataError(
                f"--task {item!r}: expected FIELD=INT with FIELD one of "
                f"{', '.join(TaskConfig.__dataclass_fields__)}"
            )
        values[key] = int(value)
    return TaskConfig(**values)
