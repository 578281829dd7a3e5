"""A synthetic reasoning task with exact-match answers: multi-step arithmetic word problems.

Each problem is a start count and a chain of additions / subtractions told as a short story;
the answer works the chain out one step per sentence and ends with the final count::

    prompt : "Question: Mia has 7 shells. Mia finds 5 more. Mia gives away 3. How many shells
              does Mia have?\\nAnswer:"
    answer : " 7 + 5 = 12. 12 - 3 = 9. The answer is 9."       (+ EOS when tokenized)

The prompt ends exactly where the model must continue, and the answer is fully determined by
the problem, so greedy generation up to EOS can be scored by exact match — of the final number
(:func:`extract_answer`, what GSM8K-style scoring uses) or of the whole worked solution. The
prompt/answer boundary is a pre-tokenizer boundary of byte-level BPE (``":"`` then ``" 7"``), so
``encode(prompt) + encode(answer) == encode(prompt + answer)``.

**Held-out split by construction.** A problem's *canonical form* is its arithmetic alone
(``"7+5-3"``; names, items and wording are not part of it). A SHA-256 of the canonical form
puts every problem in one of 100 buckets; buckets below ``heldout_percent`` are held out. The
training generator never emits a held-out problem and the held-out generator never emits a
training one, so no held-out chain of numbers is seen in training under any wording.

Deterministic in ``seed`` (Python's ``random.Random``). Running totals stay in
``[0, max_value]`` so every number is small (one BPE token each after tokenizer training).

Example (CPU, a second)::

    .venv/bin/python -m data_tools.reasoning_task --out runs/task --train 20000 --heldout 500
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from twotower_train.atomic_write import atomic_path
from twotower_train.data.errors import DataError

NAMES = (
    "Mia",
    "Tom",
    "Ana",
    "Leo",
    "Sara",
    "Ben",
    "Zoe",
    "Max",
    "Ivy",
    "Sam",
    "Eva",
    "Noah",
    "Lily",
    "Omar",
    "Rosa",
    "Finn",
    "Nina",
    "Hugo",
    "Maya",
    "Jack",
)
ITEMS = (
    "apples",
    "books",
    "coins",
    "stamps",
    "marbles",
    "cards",
    "pens",
    "shells",
    "stickers",
    "cookies",
    "flowers",
    "rocks",
    "buttons",
    "tickets",
    "beads",
    "eggs",
)
VERBS: dict[str, tuple[str, ...]] = {
    "+": ("finds {n} more", "buys {n} more", "gets {n} more", "wins {n} more"),
    "-": ("gives away {n}", "loses {n}", "sells {n}", "uses {n}"),
}
ANSWER_RE = re.compile(r"The answer is (-?\d+)\.")
BUCKETS = 100


@dataclass(frozen=True)
class TaskConfig:
    """The problem space and its held-out share."""

    min_steps: int = 2
    """Fewest operations in a chain."""
    max_steps: int = 3
    """Most operations in a chain."""
    max_start: int = 20
    """Start counts are drawn from [2, max_start]."""
    max_amount: int = 9
    """Each operation adds or removes an amount in [1, max_amount]."""
    max_value: int = 30
    """Running totals stay in [0, max_value]."""
    heldout_percent: int = 10
    """Share of canonical forms (by hash bucket) reserved for the held-out split."""

    def __post_init__(self) -> None:
        if not 1 <= self.min_steps <= self.max_steps:
            raise DataError(
                f"need 1 <= min_steps <= max_steps, got {self.min_steps} and {self.max_steps}"
            )
        if self.max_start < 2 or self.max_amount < 1 or self.max_value < self.max_start:
            raise DataError(
                "need max_start >= 2, max_amount >= 1 and max_value >= max_start; got "
                f"{self.max_start}, {self.max_amount}, {self.max_value}"
            )
        if not 0 < self.heldout_percent < BUCKETS:
            raise DataError(f"heldout_percent={self.heldout_percent} must be in (0, {BUCKETS})")


@dataclass(frozen=True)
class Problem:
    """One word problem: the arithmetic plus the wording choices."""

    start: int
    ops: tuple[tuple[str, int], ...]
    """(operator, amount) per step, applied left to right."""
    name: str
    item: str
    verbs: tuple[int, ...]
    """Index into :data:`VERBS` per step."""

    @property
    def canonical(self) -> str:
        """The arithmetic alone, e.g. ``"7+5-3"`` (what the held-out split is keyed on)."""
        return str(self.start) + "".join(f"{op}{n}" for op, n in self.ops)

    def totals(self) -> list[int]:
        """Running totals after each step."""
        out, value = [], self.start
        for op, n in self.ops:
            value = value + n if op == "+" else value - n
            out.append(value)
        return out

    @property
    def result(self) -> int:
        return self.totals()[-1]

    @property
    def prompt(self) -> str:
        story = [f"{self.name} has {self.start} {self.item}."]
        for (op, n), verb in zip(self.ops, self.verbs):
            story.append(f"{self.name} {VERBS[op][verb].format(n=n)}.")
        question = f"How many {self.item} does {self.name} have?"
        return f"Question: {' '.join(story)} {question}\nAnswer:"

    @property
    def answer(self) -> str:
        """The worked solution the model must produce after the prompt (EOS not included)."""
        steps, value = [], self.start
        for (op, n), total in zip(self.ops, self.totals()):
            steps.append(f" {value} {op} {n} = {total}.")
            value = total
        return "".join(steps) + f" The answer is {self.result}."


def bucket(canonical: str) -> int:
    """The problem's hash bucket in [0, 100): stable across Python versions and machines."""
    return int.from_bytes(hashlib.sha256(canonical.encode()).digest()[:8], "big") % BUCKETS


def is_heldout(problem: Problem, config: TaskConfig) -> bool:
    """Whether the problem belongs to the held-out split."""
    return bucket(problem.canonical) < config.heldout_percent


def _random_problem(rng: random.Random, config: TaskConfig) -> Problem:
    start = rng.randint(2, config.max_start)
    ops, value = [], start
    for _ in range(rng.randint(config.min_steps, config.max_steps)):
        choices = [
            ("+", n) for n in range(1, config.max_amount + 1) if value + n <= config.max_value
        ]
        choices += [("-", n) for n in range(1, config.max_amount + 1) if value - n >= 0]
        op, n = rng.choice(choices)
        value = value + n if op == "+" else value - n
        ops.append((op, n))
    verbs = tuple(rng.randrange(len(VERBS[op])) for op, _ in ops)
    return Problem(start, tuple(ops), rng.choice(NAMES), rng.choice(ITEMS), verbs)


def generate(count: int, split: str, config: TaskConfig, seed: int) -> Iterator[Problem]:
    """``count`` problems of ``split`` ("train" or "heldout"), deterministic in ``seed``.

    Training problems are drawn with replacement (a chain may repeat under other wording);
    held-out problems have distinct canonical forms, so each scores a different chain.

    Raises:
        DataError: unknown split, or more held-out problems asked for than the space holds.
    """
    if split not in ("train", "heldout"):
        raise DataError(f"split={split!r}; use 'train' or 'heldout'")
    # One stream per split, so the two splits do not depend on each other's counts.
    rng = random.Random(f"{seed}:{split}")
    want_heldout = split == "heldout"
    seen: set[str] = set()
    produced, tries = 0, 0
    while produced < count:
        tries += 1
        if tries > 200 * count + 10_000:
            raise DataError(
                f"found only {produced} distinct {split} problems of {count}; enlarge the problem "
                "space (max_steps, max_value, ...) or ask for fewer"
            )
        problem = _random_problem(rng, config)
        if is_heldout(problem, config) != want_heldout:
            continue
        if want_heldout:
            if problem.canonical in seen:
                continue
            seen.add(problem.canonical)
        produced += 1
        yield problem


def extract_answer(text: str) -> int | None:
    """The final number of a generated solution (the first ``The answer is N.``), or None."""
    match = ANSWER_RE.search(text)
    return int(match.group(1)) if match else None


def _write_jsonl_atomic(path: Path, rows: Iterator[dict]) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as stream:
        for row in rows:
            stream.write(json.dumps(row) + "\n")
            count += 1
    return count


def write_task_files(
    train_path: str | Path,
    heldout_path: str | Path,
    train: int,
    heldout: int,
    config: TaskConfig = TaskConfig(),
    seed: int = 0,
) -> None:
    """Write ``train`` training problems to ``train_path`` as ``{"text": prompt + answer}``
    (what ``data_tools.prepare`` tokenizes) and ``heldout`` held-out problems to
    ``heldout_path`` as ``{"id", "prompt", "answer", "result", "canonical"}``, atomically."""
    _write_jsonl_atomic(
        Path(train_path),
        ({"text": p.prompt + p.answer} for p in generate(train, "train", config, seed)),
    )
    _write_jsonl_atomic(
        Path(heldout_path),
        (
            {
                "id": i,
                "prompt": p.prompt,
                "answer": p.answer,
                "result": p.result,
                "canonical": p.canonical,
            }
            for i, p in enumerate(generate(heldout, "heldout", config, seed))
        ),
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Write the task's training and held-out jsonl files; returns the exit status."""
    p = argparse.ArgumentParser(
        prog="python -m data_tools.reasoning_task", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--train", type=int, default=20_000, help="training problems")
    p.add_argument("--heldout", type=int, default=500, help="held-out problems (distinct)")
    p.add_argument("--seed", type=int, default=0, help="generator seed")
    for field_name, value in asdict(TaskConfig()).items():
        p.add_argument(f"--{field_name.replace('_', '-')}", type=int, default=value)
    args = p.parse_args(argv)
    try:
        config = TaskConfig(**{k: getattr(args, k) for k in asdict(TaskConfig())})
        train, heldout = Path(args.out) / "task_train.jsonl", Path(args.out) / "task_heldout.jsonl"
        write_task_files(train, heldout, args.train, args.heldout, config, args.seed)
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {args.train} training problems to {train}")
    print(f"wrote {args.heldout} held-out problems to {heldout}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
