"""The reproduction's evaluation stage: every generation mode on held-out task problems through
one model (the HF export), plus the denoiser's masked-token accuracy (see
:mod:`twotower_train.reproduce.pipeline`)."""

from __future__ import annotations

import json
from pathlib import Path

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
    results, reference, ar_em = [], None, None
    for name, (mode, knobs) in table.items():
        config = modes.build_config(mode, **knobs)
        modes.generate(
            loaded.model,
            prompts[:1],
            mode,
            modes.build_config(mode, **{**knobs, "max_new_tokens": 2}),
        )  # warm-up
        tokens, stats, seconds = run_mode(loaded.model, prompts, mode, config, settings.batch)
        if reference is None:  # AR comes first
            reference = tokens
        em = _exact_match(tok, tokens, rows, loaded.eos_token_id)
        ar_em = em if ar_em is None else ar_em
        exact, _ = agreement(tokens, reference)
        forwards = stats["context"] + stats["denoiser"]
        row = {
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
            "tokens_per_s": stats["generated"] / seconds,
            "seconds": seconds,
            "generated": stats["generated"],
            "example": tok.decode(tokens[0]),
        }
        results.append(row)
        print(
            f"[reproduce] {name}: exact match {em:.3f}, "
            f"{row['tokens_per_denoiser_forward'] or 0:.2f} tokens/denoiser forward, "
            f"{seconds:.1f}s",
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
        "masked_accuracy": _masked_accuracy(loaded, rows, train_rows, loaded.block_size),
        "modes": results,
    }
