"""``benchmarks/generation.py --smoke`` runs end to end on the tiny model (no timing asserts):
every mode is measured, AR agrees with itself, speculative decoding with AR, and the JSON
line, result file and plot are written."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "generation.py"


def test_smoke_run(single_process, tmp_path, capsys):
    benchmark = runpy.run_path(str(SCRIPT), run_name="benchmark")
    report = benchmark["main"](
        [
            "--smoke",
            "--out",
            str(tmp_path),
            "--gammas",
            "0.5,0.9",
            "--max-new-tokens",
            "6",
            "--batch-sizes",
            "1,4",
        ]
    )
    names = [r["name"] for r in report["results"]]
    assert names == ["AR", "mock-AR", "diffusion γ=0.5", "diffusion γ=0.9", "speculative"]
    by_name = {r["name"]: r for r in report["results"]}
    for name in ("AR", "speculative"):  # lossless: the same continuation as AR greedy
        assert by_name[name]["exact_match_ar"] == 1.0 and by_name[name]["token_agreement_ar"] == 1.0
        assert by_name[name]["ar_nll"] == by_name["AR"]["ar_nll"]
    assert by_name["AR"]["forwards_per_token"] == 1.0
    assert by_name["mock-AR"]["tokens_per_denoiser_forward"] == 1.0
    assert by_name["speculative"]["accepted_per_verify"] is not None
    for r in report["results"]:
        assert r["tokens_per_s_batch1"] > 0 and r["tokens_per_s_batch4"] > 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert json.loads(lines[-1]) == json.loads((tmp_path / "result.json").read_text())
    assert lines[0].split()[0] == "mode" and len(lines) == 2 + len(names) + 1
    assert (tmp_path / "generation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
