"""Wall-clock generation throughput per mode: tokens/s at each batch size, modes interleaved
within every repeat (a shared machine's load drift hits all modes alike), the median over the
repeats, and the speed-up over AR at the same batch size. Shared by the generation benchmark
(``benchmarks/generation.py``) and the reproduction's evaluation
(:mod:`twotower_train.reproduce.evaluate`), so both time decoding the same way.

    timed = time_modes({"eager": model}, {"AR": ("ar", config), ...}, prompts, (1, 8), repeats=3)
    timed["eager", "AR", 1].tokens_per_s
"""

from __future__ import annotations

import dataclasses
import os
import statistics

import torch

from twotower_train.eval.mode_comparison import run_mode
from twotower_train.inference import modes

WARMUP_TOKENS = 4
"""New tokens of the one short generation per mode and model before any timing."""


@dataclasses.dataclass
class Timed:
    """One (model variant, mode, batch size): the first repeat's generations and forward counts
    (:func:`~twotower_train.eval.mode_comparison.run_mode`'s), and every repeat's seconds."""

    tokens: list[list[int]]
    stats: dict
    seconds: list[float]

    @property
    def median_seconds(self) -> float:
        return statistics.median(self.seconds)

    @property
    def tokens_per_s(self) -> float:
        """Generated tokens over the median wall time of a pass over the prompts."""
        return self.stats["generated"] / self.median_seconds


def time_modes(
    variants: dict[str, object],
    rows: dict[str, tuple[str, object]],
    prompts: list[list[int]],
    batches,
    repeats: int,
) -> dict[tuple[str, str, int], Timed]:
    """(variant, row name, batch) → :class:`Timed` for every model of ``variants`` (name → a
    decoding model: eager, compiled, …) and every row of ``rows`` (name → (mode, config)),
    decoding all of ``prompts`` in batches of each size of ``batches``, ``repeats`` times.

    Each model decodes one short generation per mode first (lazy initialisation, compilation);
    then every repeat runs every batch size, and for each batch of prompts every variant and
    mode in turn; a pass's seconds are the sum over its batches."""
    for model in variants.values():
        for mode, config in rows.values():
            warm = dataclasses.replace(config, max_new_tokens=WARMUP_TOKENS)
            modes.generate(model, prompts[:1], mode, warm)
    timed: dict[tuple[str, str, int], Timed] = {}
    for repeat in range(repeats):
        for batch in batches:
            took: dict[tuple[str, str, int], float] = {}
            # Interleaved per batch of prompts, not per pass: load that comes and goes within
            # a pass falls on every mode about equally.
            for first in range(0, len(prompts), batch):
                chunk = prompts[first : first + batch]
                for variant, model in variants.items():
                    for name, (mode, config) in rows.items():
                        key = (variant, name, batch)
                        tokens, stats, seconds = run_mode(model, chunk, mode, config, batch)
                        took[key] = took.get(key, 0.0) + seconds
                        if repeat == 0:
                            _add(timed.setdefault(key, Timed([], {}, [])), tokens, stats)
            for key, seconds in took.items():
                timed[key].seconds.append(seconds)
    return timed


def _add(timed: Timed, tokens: list[list[int]], stats: dict) -> None:
    """Add one batch's generations and forward counts to the first pass's."""
    timed.tokens += tokens
    for name, value in stats.items():
        timed.stats[name] = timed.stats.get(name, 0) + value


def speedups(timed: dict[tuple[str, str, int], Timed], reference: str = "AR") -> dict:
    """(variant, row name, batch) → tokens/s over the ``reference`` row's (same variant and
    batch size): the wall-clock speed-up over AR."""
    return {
        (variant, name, batch): t.tokens_per_s / timed[variant, reference, batch].tokens_per_s
        for (variant, name, batch), t in timed.items()
    }


def load_average() -> float:
    """The machine's 1-minute load average (what else competed for its CPUs)."""
    return os.getloadavg()[0]


def conditions() -> dict:
    """What a timing depends on besides the code: torch's intra-op threads and the load."""
    return {"threads": torch.get_num_threads(), "load_average": load_average()}
