"""The reproduction's evaluation stage: every generation mode on held-out task problems through
one model (the HF export) — quality on every evaluated problem, wall-clock tokens/s at each
timing batch size on the first few (:mod:`twotower_train.eval.throughput`) — plus the
denoiser's masked-token accuracy (see :mod:`twotower_train.reproduce.pipeline`)."""

from __future__ import annotations

import json
from pathlib import Path

from twotower_train.eval import throughput
from twotower_train.eval.masked_accuracy import (
    answer_blocks,
    masked_token_accuracy,
    unigram_accuracy,
)
from twotower_train.eval.mode_comparison import agreement, ar_nll, mode_rows, run_mode
from twotower_train.inference import modes
from twotower_train.inference.load import load_for_decoding
from twotower_train.reproduce.config import ReproduceConfig

MASK_RATIO = 0.5
UNIGRAM_REFERENCE_ROWS = 2000
"""Training answers whose tokens give the unigram baseline's most frequent token."""


def _exact_match(tokenizer, tokens, rows, eos: int) -> float:
    from data_tools.reasoning_task import extract_answer

    texts = [tokenizer.decode([t for t in toks if t != eos]) for toks in tokens]
    return sum(extract_answer(t) == r["result"] for t, r in zip(texts, rows)) / len(rows)


def _masked_accuracy(loaded, rows, train_rows, block_size: int) -> dict:
    tok = loaded.tokenizer
    prompts = [tok(r["prompt"], add_special_tokens=False)["input_ids"] for r in rows]
    answers = [tok(r["answer"], add_special_tokens=False)["input_ids"] for r in rows]
    prompts, blocks = answer_blocks(prompts, answers, loaded.eos_token_id, block_size)
    if not prompts:
        return {
            "accuracy": float("nan"),
            "unigram": float("nan"),
            "masked": 0,
            "block_size": block_size,
            "mask_ratio": MASK_RATIO,
        }
    acc = masked_token_accuracy(
        loaded.model,
        prompts,
        blocks,
        mask_token_id=loaded.mask_token_id,
        pad_token_id=loaded.pad_token_id,
        mask_ratio=MASK_RATIO,
    )
    # The training answers (the text after "Answer:") are the token stream the baseline knows.
    reference = [
        t
        for text in train_rows
        for t in tok(text.split("Answer:", 1)[-1], add_special_tokens=False)["input_ids"]
    ]
    base = unigram_accuracy(reference + [loaded.eos_token_id] * len(train_rows), acc["targets"])
    return {
        "accuracy": acc["accuracy"],
        "unigram": base["accuracy"],
        "masked": acc["masked"],
        "block_size": block_size,
        "mask_ratio": MASK_RATIO,
    }


def _time(model, configs: dict, prompts: list[list[int]], settings: ReproduceConfig) -> dict:
    """Wall-clock tokens/s and speed-up over AR per row and timing batch size (modes
    interleaved, median of the repeats), with the threads and load average they ran under."""
    start = throughput.conditions()
    timed = throughput.time_modes(
        {"eager": model}, configs, prompts, settings.timing_batches, settings.timing_repeats
    )
    speedup = throughput.speedups(timed)
    rows = {
        name: {
            key: value
            for b in settings.timing_batches
            for key, value in (
                (f"tokens_per_s_batch{b}", timed["eager", name, b].tokens_per_s),
                (f"speedup_vs_ar_batch{b}", speedup["eager", name, b]),
            )
        }
        for name in configs
    }
    return {
        "rows": rows,
        "conditions": {
            "problems": len(prompts),
            "batches": list(settings.timing_batches),
            "repeats": settings.timing_repeats,
            "threads": start["threads"],
            "load_average_start": start["load_average"],
            "load_average_end": throughput.load_average(),
            "device": str(model.context_device),
        },
    }


def evaluate(model_dir: Path, data, settings: ReproduceConfig) -> dict:
    """The evaluation section of ``results.json`` for the export at ``model_dir``."""
    loaded = load_for_decoding(model_dir, device=settings.device)
    tok = loaded.tokenizer
    rows = [json.loads(line) for line in Path(data.heldout).read_text().splitlines()]
    rows = rows[: settings.eval_problems]
    train_rows = []
    with open(Path(data.heldout).parent / "raw" / "task_train.jsonl") as f:
        for line in f:
            train_rows.append(json.loads(line)["text"])
            if len(train_rows) == UNIGRAM_REFERENCE_ROWS:
                break
    prompts = [tok(r["prompt"], add_special_tokens=False)["input_ids"] for r in rows]
    # S of the diffusion rows and the masked-accuracy block: the block size the model trained at.
    table = mode_rows(
        loaded.sampler_ids(),
        loaded.mask_token_id,
        settings.max_new_tokens,
        gammas=settings.gammas,
        block_size=loaded.block_size,
    )
    configs = {
        name: (mode, modes.build_config(mode, **knobs)) for name, (mode, knobs) in table.items()
    }
    results, reference, ar_em = [], None, None
    for name, (mode, config) in configs.items():
        tokens, stats, _ = run_mode(loaded.model, prompts, mode, config, settings.batch)
        if reference is None:  # AR comes first
            reference = tokens
        em = _exact_match(tok, tokens, rows, loaded.eos_token_id)
        ar_em = em if ar_em is None else ar_em
        exact, _ = agreement(tokens, reference)
        forwards = stats["context"] + stats["denoiser"]
        results.append(
            {
                "name": name,
                "mode": mode,
                "config": {k: v for k, v in vars(config).items() if k != "choice"},
                "exact_match": em,
                "retained": em / ar_em if ar_em else None,
                "ar_nll": ar_nll(loaded.model, prompts, tokens, loaded.pad_token_id),
                "tokens_per_denoiser_forward": (
                    stats["generated"] / stats["denoiser"] if stats["denoiser"] else None
                ),
                "tokens_per_forward": stats["generated"] / forwards,
                "exact_match_ar": exact,
                "generated": stats["generated"],
                "example": tok.decode(tokens[0]),
            }
        )
    timing = _time(loaded.model, configs, prompts[: settings.timing_prompts], settings)
    for row in results:
        row.update(timing["rows"][row["name"]])
        print(
            f"[reproduce] {row['name']}: exact match {row['exact_match']:.3f}, "
            f"{row['tokens_per_denoiser_forward'] or 0:.2f} tokens/denoiser forward, "
            + ", ".join(
                f"{row[f'tokens_per_s_batch{b}']:.0f} tokens/s "
                f"({row[f'speedup_vs_ar_batch{b}']:.2f}× AR) at batch {b}"
                for b in settings.timing_batches
            ),
            flush=True,
        )
    return {
        "model": str(model_dir),
        "eval": {
            "problems": len(rows),
            "max_new_tokens": settings.max_new_tokens,
            "batch": settings.batch,
            "gammas": settings.gammas,
        },
        "timing": timing["conditions"],
        "masked_accuracy": _masked_accuracy(loaded, rows, train_rows, loaded.block_size),
        "modes": results,
    }
