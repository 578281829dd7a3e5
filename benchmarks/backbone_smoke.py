"""Forward + backward of a backbone preset on this machine (CPU: seconds)::

.venv/bin/python benchmarks/backbone_smoke.py [preset]
"""

from __future__ import annotations

import sys

import torch

from twotower_train import distributed
from twotower_train.model.backbone import build_backbone, forward_logits
from twotower_train.model.config import preset
from twotower_train.timing import median_seconds


def smoke(preset_name: str = "tiny", seq_len: int = 64, batch: int = 2, repeats: int = 5) -> float:
    """Forward + backward of a preset on this machine: prints and returns the median seconds
    over ``repeats`` runs after one warm-up (which pays one-time kernel compilation)."""
    distributed.initialize(seed=1234)
    cfg = preset(preset_name)
    model = build_backbone(cfg)
    tokens = torch.randint(0, cfg.vocab_size, (batch, seq_len))

    def step():
        model.zero_grad(set_to_none=True)
        forward_logits(model, tokens).float().logsumexp(-1).mean().backward()

    seconds, warmup = median_seconds(step, repeats=repeats)
    print(
        f"{preset_name}: forward+backward of {batch}x{seq_len} tokens in {seconds:.3f}s "
        f"(median of {repeats}; warm-up {warmup:.3f}s)"
    )
    return seconds


if __name__ == "__main__":
    smoke(*sys.argv[1:2])
