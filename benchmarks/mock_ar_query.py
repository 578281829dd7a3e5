"""Which input shape should mock-AR feed the denoiser? Next-token accuracy and NLL on held-out
text for a lone [MASK] (query block of 1) vs the first position of an all-[MASK] block of S.

Training shows the denoiser blocks of S = 16 or 32 at t = its masked fraction; a fully masked
block at t = 1 is one of them, a 1-token block is not. This script measures both (and the
context tower's own next-token accuracy as the AR reference) on sequences of the run's
validation split (last curriculum phase's blend, Megatron's split, never trained on), at
``--positions`` evenly spaced positions per sequence. The chosen default is
``samplers.QUERY_BLOCK_SIZE`` (docs/inference.md gives the numbers)::

    .venv/bin/python benchmarks/mock_ar_query.py --model runs/demo/stage2/checkpoints
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")

import torch  # noqa: E402

from twotower_train.data import build_blended_datasets  # noqa: E402
from twotower_train.eval.scoring import score_ar, score_mock_ar  # noqa: E402
from twotower_train.inference.load import load_for_decoding  # noqa: E402


def _validation_sequences(cfg, count: int) -> list[list[int]]:
    phase = cfg.curriculum.phases[-1]
    _, valid = build_blended_datasets(
        list(phase.blend),
        cfg.data.seq_length,
        {"train": 1, "valid": count},
        cfg.data.seed,
        cfg.data.split,
        tokenizer=cfg.data.tokenizer,
    )
    return [torch.as_tensor(valid[i]["tokens"]).tolist() for i in range(count)]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="two-tower trainer checkpoint")
    p.add_argument("--sequences", type=int, default=64)
    p.add_argument("--positions", type=int, default=8, help="per sequence, evenly spaced")
    p.add_argument("--sizes", default="1,16,32", help="query block sizes to compare")
    args = p.parse_args(argv)

    loaded = load_for_decoding(args.model)
    if loaded.train_config is None:
        raise SystemExit("--model must be a trainer checkpoint (its recipe names the data)")
    sequences = _validation_sequences(loaded.train_config, args.sequences)
    length = len(sequences[0])
    positions = [round(length * (k + 1) / (args.positions + 1)) for k in range(args.positions)]
    scorers = {"AR (context tower)": lambda pairs: score_ar(loaded.model, pairs)}
    for size in (int(s) for s in args.sizes.split(",")):
        scorers[f"denoiser, query block {size}"] = lambda pairs, size=size: score_mock_ar(
            loaded.model, pairs, loaded.mask_token_id, query_block_size=size
        )
    report = {
        "model": args.model,
        "sequences": len(sequences),
        "positions": positions,
        "results": {},
    }
    logprobs = {}
    for name, score in scorers.items():
        scores = []
        for pos in positions:  # every sequence at one position: equal lengths, one batch
            scores += score([(seq[:pos], [seq[pos]]) for seq in sequences])
        logprobs[name] = torch.tensor([logprob for logprob, _ in scores], dtype=torch.float64)
        report["results"][name] = {
            "accuracy": sum(greedy for _, greedy in scores) / len(scores),
            "nll": float(-logprobs[name].mean()),
            "tokens": len(scores),
        }
    # Paired on the same tokens: NLL difference to the lone [MASK] and its standard error.
    baseline = logprobs.get("denoiser, query block 1")
    for name, r in report["results"].items():
        if baseline is not None and name.startswith("denoiser"):
            diff = logprobs[name] - baseline  # > 0: lower NLL than the 1-token query
            r["nll_gain_vs_block_1"] = float(diff.mean())
            r["nll_gain_stderr"] = float(diff.std() / len(diff) ** 0.5)
        gain = (
            f"  NLL gain vs block 1 {r['nll_gain_vs_block_1']:+.4f} ± {r['nll_gain_stderr']:.4f}"
            if "nll_gain_vs_block_1" in r
            else ""
        )
        print(
            f"{name:<28} accuracy {r['accuracy']:.4f}  NLL {r['nll']:.4f}"
            f"  ({r['tokens']} tokens){gain}"
        )
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
