"""``benchmarks/mock_ar_accuracy.py`` on the tiny checkpoint's validation split (mechanics)."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "mock_ar_accuracy.py"


def test_compares_mock_ar_with_ar(two_tower_checkpoint):
    benchmark = runpy.run_path(str(SCRIPT), run_name="benchmark")
    report = benchmark["main"](
        ["--model", str(two_tower_checkpoint), "--sequences", "4", "--positions", "2"]
    )
    results = report["results"]
    assert set(results) == {"AR (context tower)", "mock-AR (denoiser)"}
    assert all(r["tokens"] == 8 and 0 <= r["accuracy"] <= 1 for r in results.values())
    assert report["nll_gap"] == pytest.approx(
        results["mock-AR (denoiser)"]["nll"] - results["AR (context tower)"]["nll"]
    )
