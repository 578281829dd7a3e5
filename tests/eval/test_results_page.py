"""The results page: the generated part replaces only what lies between its markers; the γ = 0.8
verdict and the card table set the measured wall-clock speed-up over AR against the card's
2.42× and keep tokens per denoiser forward (a forward count) apart from it."""

from __future__ import annotations

import re

from twotower_train.reproduce.pipeline import BEGIN, END, _splice
from twotower_train.reproduce.results import (
    CARD_SPEEDUP,
    card_table,
    markdown_table,
    page,
    plot_tradeoff,
    verdict,
)


def _row(name, mode, em, retained, per_forward, speedup=(1.0, 1.0)):
    return {
        "name": name,
        "mode": mode,
        "exact_match": em,
        "retained": retained,
        "ar_nll": 1.0,
        "tokens_per_denoiser_forward": per_forward,
        "tokens_per_forward": 1.0,
        "exact_match_ar": 0.5,
        "tokens_per_s_batch1": 100.0 * speedup[0],
        "speedup_vs_ar_batch1": speedup[0],
        "tokens_per_s_batch8": 700.0 * speedup[1],
        "speedup_vs_ar_batch8": speedup[1],
        "config": {"confidence_threshold": 0.8},
    }


def _report(per_forward=2.41, speedup=(0.88, 0.72), retained=0.975):
    return {
        "modes": [
            _row("AR", "ar", 0.8, 1.0, None),
            _row("diffusion γ=0.8", "mask_diffusion", 0.78, retained, per_forward, speedup),
        ],
        "timing": {
            "problems": 16,
            "batches": [1, 8],
            "repeats": 3,
            "threads": 1,
            "load_average_start": 2.5,
            "load_average_end": 3.25,
            "device": "cpu",
        },
        "eval": {"problems": 150, "max_new_tokens": 32, "batch": 8},
        "machine": {"cpus": 2, "torch": "2", "device": "CPU", "threads": 1},
        "wall_seconds": {"eval": 10.0},
        "command": "twotower-demo",
        "masked_accuracy": {
            "accuracy": 0.7,
            "unigram": 0.1,
            "masked": 10,
            "block_size": 16,
            "mask_ratio": 0.5,
        },
    }


def test_splice_keeps_prose_and_replaces_the_block():
    text = f"# Title\n\nprose\n\n{BEGIN}\nold table\n{END}\n\nafter\n"
    new = _splice(text, "new table\n")
    assert new == f"# Title\n\nprose\n\n{BEGIN}\nnew table\n{END}\n\nafter\n"
    assert _splice(new, "newer\n").count(BEGIN) == 1
    assert _splice("", "t\n") == f"{BEGIN}\nt\n{END}\n"


def test_verdict_compares_wall_clock_speedups_with_the_card():
    slow = verdict(_report(per_forward=2.41, speedup=(0.88, 0.72)))
    assert "0.88× AR's wall-clock tokens/s at batch 1 and 0.72× at batch 8 (card" in slow
    assert f"(card: {CARD_SPEEDUP}× on BF16 on 2×H100)" in slow
    assert "is not reached on this machine (cpu, 1 thread(s), load average 2.5 → 3.2)" in slow
    # A forward count at the card's number is no speed-up: 2.42 tokens per forward, 1.1× wall.
    counted = verdict(_report(per_forward=2.42, speedup=(1.1, 0.9)))
    assert "not reached" in counted and "2.42 tokens per denoiser forward" in counted
    fast = verdict(_report(per_forward=1.5, speedup=(2.5, 1.2)))
    assert "speed-up is reached at batch 1 (" in fast
    # The demo's bar: ≥ 95 % of AR at ≥ 2 tokens per denoiser forward.
    assert slow.endswith("is met.")
    assert fast.endswith("is not met.")
    assert verdict(_report(retained=0.94)).endswith("is not met.")


def test_tables_keep_forward_counts_apart_from_speedups():
    report = _report(per_forward=2.41, speedup=(0.88, 0.72))
    table = markdown_table(report).splitlines()
    assert table[0].count("× AR, batch") == 2 and table[1].count("---") == 11
    assert table[2].startswith("| AR | 0.800 | 100.0% |") and "| – |" in table[2]
    assert table[3].startswith("| diffusion γ=0.8 | 0.780 | 97.5% | 1.000 | 2.41 | 1.00 |")
    assert table[3].endswith("| 88 | 0.88× | 504 | 0.72× |")
    card = card_table(report).splitlines()
    assert "tokens / denoiser forward" in card[0] and "wall-clock speed-up" in card[0]
    assert card[2].split(" | ")[2] == "**2.42×** (batch not stated)"
    assert card[3] == "| this run, batch 1 | 97.5% (exact match) | **0.88×** | 2.41 |"
    assert card[4] == "| this run, batch 8 | 97.5% (exact match) | **0.72×** | 2.41 |"
    # Every "×" figure on the page is a wall-clock ratio, never the forward count 2.41.
    text = page(report)
    assert "2.41×" not in text and re.search(r"2\.41 tokens per denoiser forward", text)
    assert "1 thread(s), load average 2.5 → 3.2" in text


def test_plot_is_written(tmp_path):
    plot_tradeoff(_report(), tmp_path / "p.png")
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
