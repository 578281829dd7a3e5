"""Wall-clock timing of a callable for smoke checks and benchmark scripts (never for tests)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def median_seconds(
    step: Callable[[], object], *, warmup: int = 1, repeats: int = 5
) -> tuple[float, float]:
    """(median seconds of ``repeats`` calls, seconds the ``warmup`` calls took before them).

    The warm-up pays one-time costs (kernel compilation, allocator growth) that a steady-state
    figure must leave out; the median keeps a noisy shared machine's outliers out.
    """
    start = time.perf_counter()
    for _ in range(warmup):
        step()
    warmup_seconds = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times), warmup_seconds
