"""Comparing the generation modes on one prompt set: the rows (AR, mock-AR, mask diffusion per
γ, speculative), a timed batched run of each with its forward counts, agreement with AR and the
AR tower's NLL of the continuations. Shared by the generation benchmark
(``benchmarks/generation.py``) and the reproduction pipeline (``twotower_train.reproduce``), so
both count forwards and score quality the same way."""

from __future__ import annotations

import time

from twotower_train.eval.scoring import score_ar
from twotower_train.inference import modes

GAMMAS = (0.5, 0.7, 0.8, 0.9, 0.95)
"""The confidence thresholds of the card's γ trade-off."""


def mode_rows(
    ids: dict,
    mask_token_id: int,
    max_new_tokens: int,
    gammas=GAMMAS,
    block_size: int | None = None,
    steps_per_block: int | None = None,
    speculative: dict | None = None,
) -> dict[str, tuple[str, dict]]:
    """Row name → (mode, knobs): AR, mock-AR, mask diffusion per γ, speculative. Mask diffusion
    decodes blocks of ``block_size`` (callers pass the trained S, ``LoadedModel.block_size``;
    None: the sampler config's default) with ``steps_per_block`` steps (default: S)."""
    ids = {**ids, "max_new_tokens": max_new_tokens}
    masked = {**ids, "mask_token_id": mask_token_id}
    rows = {"AR": ("ar", ids), "mock-AR": ("mock_ar", ids)}
    blocks = {"block_size": block_size, "steps_per_block": steps_per_block or block_size}
    for gamma in gammas:
        rows[f"diffusion γ={gamma:g}"] = (
            "mask_diffusion",
            {
                **masked,
                **blocks,
                "confidence_threshold": gamma,
            },
        )
    rows["speculative"] = ("speculative", {**masked, **(speculative or {})})
    return rows


def run_mode(model, prompts, mode: str, config, batch: int):
    """(generations per prompt, combined statistics, seconds) for ``prompts`` in batches."""
    tokens = []
    stats = dict.fromkeys(
        ("context", "denoiser", "generated", "accepted", "verify", "context_tokens"), 0
    )
    start = time.perf_counter()
    for first in range(0, len(prompts), batch):
        out = modes.generate(model, prompts[first : first + batch], mode, config)
        tokens += out.tokens
        stats["context"] += out.row_context_forwards
        stats["denoiser"] += out.row_denoiser_forwards
        stats["generated"] += out.generated
        stats["context_tokens"] += out.context_tokens  # a shifted denoiser's free first tokens
        stats["accepted"] += getattr(out, "accepted", 0)  # speculative only
        stats["verify"] += getattr(out, "verify_forwards", 0)
    return tokens, stats, time.perf_counter() - start


def agreement(tokens, reference) -> tuple[float, float]:
    """(fraction of rows equal to ``reference``, fraction of reference tokens matched by position)."""
    exact = sum(a == b for a, b in zip(tokens, reference)) / len(reference)
    matched = sum(sum(x == y for x, y in zip(a, b)) for a, b in zip(tokens, reference))
    return exact, matched / max(1, sum(len(b) for b in reference))


def ar_nll(model, prompts, tokens, pad_token_id: int) -> float:
    """Mean NLL per token of the continuations ``tokens`` under the AR (context) tower."""
    pairs = [(p, t) for p, t in zip(prompts, tokens) if t]
    if not pairs:
        return float("nan")
    scores = score_ar(model, pairs, pad_token_id)
    return -sum(s for s, _ in scores) / sum(len(t) for _, t in pairs)
