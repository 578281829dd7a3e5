"""Forward+backward time of the backbone (AR) and of the two-tower training step, side by side.

Both are measured in one process on the same backbone weights and the same token batch, with
warm-up iterations and the median over repeats, so their ratio is meaningful on a noisy
machine. The two-tower step is the vectorised training forward (context tower once under
no_grad + denoiser over all noisy blocks) plus the denoiser's backward.

    .venv/bin/python benchmarks/step_time.py --preset tiny --seq-len 256 --batch 4 --block-size 16
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")

import torch  # noqa: E402

from twotower_train import distributed  # noqa: E402
from twotower_train.diffusion import corrupt_blocks  # noqa: E402
from twotower_train.model.backbone import forward_logits  # noqa: E402
from twotower_train.model.config import preset  # noqa: E402
from twotower_train.model.two_tower import TwoTowerModel  # noqa: E402
from twotower_train.timing import median_seconds  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    distributed.initialize(seed=0)
    cfg = preset(args.preset)
    model = TwoTowerModel.build(cfg).train()
    backbone = model.denoiser.backbone  # trainable copy of the backbone: the AR baseline
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(4, cfg.vocab_size, (args.batch, args.seq_len), generator=gen)
    corruption = corrupt_blocks(tokens, args.block_size, cfg.mask_token_id, generator=gen)

    def ar_step():
        backbone.zero_grad(set_to_none=True)
        logits = forward_logits(backbone, tokens)
        torch.nn.functional.cross_entropy(
            logits[:, :-1].flatten(0, 1).float(), tokens[:, 1:].flatten()
        ).backward()

    def two_tower_step():
        model.zero_grad(set_to_none=True)
        logits = model(tokens, corruption.noisy, corruption.t_realised, args.block_size)
        torch.nn.functional.cross_entropy(
            logits[corruption.masked].float(), tokens[corruption.masked]
        ).backward()

    ar, _ = median_seconds(ar_step, warmup=args.warmup, repeats=args.repeats)
    tt, _ = median_seconds(two_tower_step, warmup=args.warmup, repeats=args.repeats)
    print(
        f"preset={args.preset} batch={args.batch} seq={args.seq_len} S={args.block_size} "
        f"threads={torch.get_num_threads()}\n"
        f"AR forward+backward:        {ar * 1e3:8.1f} ms\n"
        f"two-tower forward+backward: {tt * 1e3:8.1f} ms\n"
        f"ratio two-tower / AR:       {tt / ar:8.2f}x"
    )
    distributed.shutdown()


if __name__ == "__main__":
    main()
