"""The results page: the generated part replaces only what lies between its markers, and the
γ = 0.8 verdict follows the measured numbers."""

from __future__ import annotations

from twotower_train.reproduce.pipeline import BEGIN, END, _splice
from twotower_train.reproduce.results import card_point, markdown_table


def _row(name, mode, em, retained, per_forward):
    return {
        "name": name,
        "mode": mode,
        "exact_match": em,
        "retained": retained,
        "ar_nll": 1.0,
        "tokens_per_denoiser_forward": per_forward,
        "tokens_per_forward": 1.0,
        "exact_match_ar": 0.5,
        "tokens_per_s": 10.0,
        "config": {},
    }


def test_splice_keeps_prose_and_replaces_the_block():
    page = f"# Title\n\nprose\n\n{BEGIN}\nold table\n{END}\n\nafter\n"
    new = _splice(page, "new table\n")
    assert new == f"# Title\n\nprose\n\n{BEGIN}\nnew table\n{END}\n\nafter\n"
    assert _splice(new, "newer\n").count(BEGIN) == 1
    assert _splice("", "t\n") == f"{BEGIN}\nt\n{END}\n"


def test_card_point_verdict():
    ar = _row("AR", "ar", 0.8, 1.0, None)
    met = {"modes": [ar, _row("diffusion γ=0.8", "mask_diffusion", 0.78, 0.975, 2.1)]}
    missed = {"modes": [ar, _row("diffusion γ=0.8", "mask_diffusion", 0.78, 0.975, 1.9)]}
    assert card_point(met).endswith("is met.")
    assert card_point(missed).endswith("is not met.")
    table = markdown_table(met).splitlines()
    assert table[2].startswith("| AR | 0.800 | 100.0% |") and "| – |" in table[2]
    assert table[3].startswith("| diffusion γ=0.8 | 0.780 | 97.5% |")
