"""Mock-AR (the released semantics) against AR: next-token accuracy and NLL on held-out text.

Mock-AR predicts token p with the unmodulated denoiser on token p − 1 and the context cache of
the positions before it (``twotower_train.eval.scoring.score_mock_ar``); AR is the context
tower (``score_ar``). Both are measured on sequences of the run's validation split (last
curriculum phase's blend, Megatron's split, never trained on), at ``--positions`` evenly spaced
positions per sequence, paired on the same tokens::

    .venv/bin/python benchmarks/mock_ar_accuracy.py --model runs/demo/stage2/checkpoints
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
    args = p.parse_args(argv)

    loaded = load_for_decoding(args.model)
    if loaded.train_config is None:
        raise SystemExit("--model must be a trainer checkpoint (its recipe names the data)")
    sequences = _validation_sequences(loaded.train_config, args.sequences)
    length = len(sequences[0])
    positions = [round(length * (k + 1) / (args.positions + 1)) for k in range(args.positions)]
    scorers = {
        "AR (context tower)": lambda pairs: score_ar(loaded.model, pairs),
        "mock-AR (denoiser)": lambda pairs: score_mock_ar(loaded.model, pairs),
    }
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
    # Paired on the same tokens: mock-AR's NLL minus AR's, with its standard error.
    diff = logprobs["AR (context tower)"] - logprobs["mock-AR (denoiser)"]  # > 0: AR better
    report["nll_gap"] = float(diff.mean())
    report["nll_gap_stderr"] = float(diff.std() / len(diff) ** 0.5)
    for name, r in report["results"].items():
        print(
            f"{name:<20} accuracy {r['accuracy']:.4f}  NLL {r['nll']:.4f}  ({r['tokens']} tokens)"
        )
    print(f"mock-AR NLL − AR NLL {report['nll_gap']:+.4f} ± {report['nll_gap_stderr']:.4f}")
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
