"""The mini-reproduction corpus: the demo's real text mixed with the reasoning task.

:func:`prepare_repro_data` writes, under ``out_dir``, everything
:func:`data_tools.demo_corpus.prepare_demo_data` writes (raw text, tokenizer, indexed datasets)
with the reasoning task (``data_tools.reasoning_task``) as a third source::

    raw/{wiki,chitchat}.jsonl      packaged real text
    raw/task_train.jsonl           training problems, {"text": prompt + answer}
    task_heldout.jsonl             held-out problems (prompt / answer / result), for evaluation
    task.json                      the task settings the two task files were generated with
    tokenizer/                     byte-level BPE trained on all three sources, so numbers and the
                                   answer format become single tokens
    indexed/{wiki,chitchat,task}.{bin,idx}

and returns a :class:`ReproData` whose phase-1 ("broad") and phase-2 ("quality") blends mix text
and task (the weights ``recipes/data/mini_repro.yaml`` uses). A second call with the same
settings reuses everything.

Example (CPU, under a minute)::

    .venv/bin/python -m data_tools.repro_corpus --out runs/mini_repro_data
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from data_tools.demo_corpus import DemoData, prepare_demo_data
from data_tools.reasoning_task import TaskConfig, write_task_files
from twotower_train.data.errors import DataError

PHASE1_WEIGHTS: dict[str, float] = {"wiki": 0.2, "chitchat": 0.2, "task": 0.6}
"""Broad phase: task-heavy with both text sources."""
PHASE2_WEIGHTS: dict[str, float] = {"wiki": 0.25, "chitchat": 0.05, "task": 0.7}
"""Quality phase: the task and mostly encyclopedic text."""


@dataclass
class ReproData(DemoData):
    """:class:`DemoData` plus the held-out task problems."""

    heldout: Path = Path()
    """``task_heldout.jsonl``: one ``{"id", "prompt", "answer", "result", "canonical"}`` a line."""


def _ensure_task(out: Path, train: int, heldout: int, task: TaskConfig, seed: int) -> Path:
    """Write the task files unless ``task.json`` says they match these settings."""
    meta = out / "task.json"
    want = {"train": train, "heldout": heldout, "seed": seed, "config": asdict(task)}
    train_path, heldout_path = out / "raw" / "task_train.jsonl", out / "task_heldout.jsonl"
    if (
        meta.exists()
        and json.loads(meta.read_text()) == want
        and train_path.exists()
        and heldout_path.exists()
    ):
        return heldout_path
    meta.unlink(missing_ok=True)
    write_task_files(train_path, heldout_path, train, heldout, task, seed)
    meta.write_text(json.dumps(want, indent=2))
    return heldout_path


def prepare_repro_data(
    out_dir: str | Path,
    *,
    train_problems: int = 60_000,
    heldout_problems: int = 500,
    task: TaskConfig = TaskConfig(),
    task_seed: int = 0,
    vocab_size: int = 4096,
    seed: int = 1234,
    workers: int = 2,
    progress: bool = False,
    phase1_weights: Mapping[str, float] = PHASE1_WEIGHTS,
    phase2_weights: Mapping[str, float] = PHASE2_WEIGHTS,
) -> ReproData:
    """Build (or reuse) the mixed corpus under ``out_dir``; see the module docstring.

    Raises:
        DataError: a corpus package is missing (the message gives the pip command), or bad task
            settings (the message names them).
    """
    out = Path(out_dir)
    if train_problems <= 0 or heldout_problems <= 0:
        raise DataError(
            f"train_problems={train_problems} and heldout_problems={heldout_problems} must be "
            "positive"
        )
    heldout = _ensure_task(out, train_problems, heldout_problems, task, task_seed)
    demo = prepare_demo_data(
        out,
        vocab_size,
        seed,
        workers=workers,
        progress=progress,
        extra_sources={"task": out / "raw" / "task_train.jsonl"},
        phase1_weights=phase1_weights,
        phase2_weights=phase2_weights,
    )
    return ReproData(**vars(demo), heldout=heldout)


def main(argv: Sequence[str] | None = None) -> int:
    """Build the mixed corpus and print its sizes; returns the exit status."""
    p = argparse.ArgumentParser(
        prog="python -m data_tools.repro_corpus", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--out", default="runs/mini_repro_data", help="output folder")
    p.add_argument("--train-problems", type=int, default=60_000, help="training problems")
    p.add_argument("--heldout-problems", type=int, default=500, help="held-out problems")
    p.add_argument("--task-seed", type=int, default=0, help="problem generator seed")
    p.add_argument("--vocab-size", type=int, default=4096, help="tokenizer vocabulary size")
    p.add_argument("--workers", type=int, default=2, help="tokenizer processes")
    args = p.parse_args(argv)
    start = time.perf_counter()
    try:
        data = prepare_repro_data(
            args.out,
            train_problems=args.train_problems,
            heldout_problems=args.heldout_problems,
            task_seed=args.task_seed,
            vocab_size=args.vocab_size,
            workers=args.workers,
            progress=True,
        )
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for stats in data.stats.values():
        print(stats.summary())
    print(f"tokenizer: {data.tokenizer_dir} ({data.vocab_size} ids)")
    print(f"held-out task problems: {data.heldout}")
    print(f"phase1_blend: {data.phase1_blend}")
    print(f"phase2_blend: {data.phase2_blend}")
    print(f"total {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
