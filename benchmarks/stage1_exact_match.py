"""AR exact match of stage-1 (single-tower) checkpoints on held-out reasoning-task problems: when
in stage 1 does the backbone learn the task? Greedy decoding (a full forward per new token, no
cache: the checkpoints are tiny), prompts of one length batched together, scored like the
reproduction pipeline (``extract_answer`` of the text before EOS against the problem's result).

    .venv/bin/twotower-demo ... --stage1-set checkpoint.save_interval=200 \\
        --stage1-set checkpoint.keep_last=20          # keep the intermediate checkpoints
    .venv/bin/python benchmarks/stage1_exact_match.py --data runs/demo/data \\
        runs/demo/stage1/checkpoints/iter_*

docs/results.md gives the demo's curve.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")

import torch  # noqa: E402


@torch.no_grad()
def greedy(model, prompts: list[list[int]], eos: int, max_new_tokens: int) -> list[list[int]]:
    """Greedy continuations (up to and without EOS) of ``prompts`` under an AR backbone."""
    from twotower_train.model.backbone import forward_logits

    by_length: dict[int, list[int]] = {}
    for index, prompt in enumerate(prompts):
        by_length.setdefault(len(prompt), []).append(index)
    out: list[list[int]] = [[] for _ in prompts]
    for rows in by_length.values():
        tokens = torch.tensor([prompts[i] for i in rows])
        done = torch.zeros(len(rows), dtype=torch.bool)
        for _ in range(max_new_tokens):
            step = forward_logits(model, tokens)[:, -1].argmax(-1)
            for row, token, finished in zip(rows, step.tolist(), done.tolist()):
                if not finished and token != eos:
                    out[row].append(token)
            done |= step == eos
            if done.all():
                break
            tokens = torch.cat([tokens, step[:, None]], dim=1)
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoints", nargs="+", help="stage-1 checkpoint folders (iter_* or roots)")
    p.add_argument("--data", required=True, help="the pipeline's data folder (OUT/data)")
    p.add_argument("--problems", type=int, default=150, help="held-out problems scored")
    p.add_argument("--max-new-tokens", type=int, default=32)
    args = p.parse_args(argv)

    import twotower_train  # noqa: F401  (CPU compatibility)
    from data_tools.reasoning_task import extract_answer
    from twotower_train import distributed
    from twotower_train.data.tokenizer import load_tokenizer
    from twotower_train.inference.load import load_trained_model

    data = Path(args.data)
    rows = [json.loads(line) for line in (data / "task_heldout.jsonl").read_text().splitlines()][
        : args.problems
    ]
    tokenizer = load_tokenizer(data / "tokenizer", expected=None)
    prompts = [tokenizer(r["prompt"], add_special_tokens=False)["input_ids"] for r in rows]
    distributed.initialize(seed=0)
    report = {}
    for path in args.checkpoints:
        model, cfg = load_trained_model(path)
        texts = [
            tokenizer.decode(t)
            for t in greedy(model, prompts, cfg.model.eos_token_id, args.max_new_tokens)
        ]
        exact = sum(extract_answer(t) == r["result"] for t, r in zip(texts, rows)) / len(rows)
        report[str(path)] = exact
        print(f"{path}: AR exact match {exact:.3f} ({len(rows)} problems)", flush=True)
    return report


if __name__ == "__main__":
    main()
