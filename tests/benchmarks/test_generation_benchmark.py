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
        assert r["variant"] == "eager"
    assert by_name["AR"]["speedup_vs_ar_batch1"] == 1.0
    # Per-forward cost: every kind timed at both batch sizes.
    assert report["forward_ms"].keys() == {"eager"}
    for batch in ("batch1", "batch4"):
        costs = report["forward_ms"]["eager"][batch]
        assert set(costs) == {"ar_step", "denoiser_block", "context_advance", "verify"}
        assert all(ms > 0 for ms in costs.values())
    # Experts per MoE layer (pattern M*E: one MoE layer per tower): one token routes to at most
    # top-k experts, a block of S tokens to at least as many, never more than exist.
    from twotower_train.model.config import preset

    cfg = preset("tiny", pattern="M*E")
    touched = report["experts_touched"]
    assert 1 <= touched["ar_step"] <= cfg.moe_top_k
    assert touched["ar_step"] <= touched["denoiser_block"] <= cfg.num_experts
    assert report["compile_error"] is None
    lines = capsys.readouterr().out.strip().splitlines()
    assert json.loads(lines[-1]) == json.loads((tmp_path / "result.json").read_text())
    assert "thread(s)" in lines[0] and lines[1].split()[0] == "mode"
    assert lines[3 + len(names)] == "" and lines[4 + len(names)] == "S = 16"
    assert lines[-2].startswith("experts / MoE layer")
    assert (tmp_path / "generation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
