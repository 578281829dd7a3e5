"""``benchmarks/stage1_exact_match.py``'s greedy decoding against an independent reference: a
teacher-forced forward over prompt + continuation, one row at a time, whose argmax must give
every generated token and then EOS (or the length limit)."""

from __future__ import annotations

import runpy
from pathlib import Path

import torch

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "stage1_exact_match.py"


def test_greedy_matches_teacher_forced_argmax(backbone_checkpoint):
    from twotower_train import distributed
    from twotower_train.inference.load import load_trained_model
    from twotower_train.model.backbone import forward_logits

    greedy = runpy.run_path(str(SCRIPT), run_name="benchmark")["greedy"]
    distributed.initialize(seed=0)
    model, cfg = load_trained_model(backbone_checkpoint)
    limit = 6
    prompts = [[5, 9, 11], [7, 8, 9, 10, 12], [5, 9, 12], [30]]  # lengths 3, 5, 3, 1
    first = greedy(model, prompts, cfg.model.eos_token_id, limit)
    # A 1-step model rarely says EOS: make a token it generates the EOS to test stopping too.
    for eos in (cfg.model.eos_token_id, first[0][2]):
        out = greedy(model, prompts, eos, limit)
        assert len(out) == len(prompts)
        with torch.no_grad():
            for prompt, continuation in zip(prompts, out):
                assert len(continuation) <= limit and eos not in continuation
                logits = forward_logits(model, torch.tensor([prompt + continuation]))[0]
                predicted = logits[len(prompt) - 1 :].argmax(-1).tolist()
                assert predicted[: len(continuation)] == continuation
                if len(continuation) < limit:
                    assert predicted[len(continuation)] == eos
    assert len(out[0]) < limit  # the stop was exercised
