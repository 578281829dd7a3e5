"""``benchmarks/mock_ar_query.py`` on the tiny checkpoint's validation split (mechanics only)."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "mock_ar_query.py"


def test_compares_query_shapes(two_tower_checkpoint):
    benchmark = runpy.run_path(str(SCRIPT), run_name="benchmark")
    report = benchmark["main"](
        [
            "--model",
            str(two_tower_checkpoint),
            "--sequences",
            "4",
            "--positions",
            "2",
            "--sizes",
            "1,4",
        ]
    )
    results = report["results"]
    assert set(results) == {
        "AR (context tower)",
        "denoiser, query block 1",
        "denoiser, query block 4",
    }
    assert all(r["tokens"] == 8 and 0 <= r["accuracy"] <= 1 for r in results.values())
    assert results["denoiser, query block 1"]["nll_gain_vs_block_1"] == 0.0
    assert results["denoiser, query block 4"]["nll_gain_vs_block_1"] == pytest.approx(
        results["denoiser, query block 1"]["nll"] - results["denoiser, query block 4"]["nll"]
    )
