"""An imported checkpoint records the recipe's training numerics (router and seeded-scan dtypes),
which no HF config holds; the architecture comes from the folder."""

from __future__ import annotations

from dataclasses import replace

from twotower_train.convert.commands import imported_recipe
from twotower_train.model.config import PRESETS, ParallelConfig


def test_finetune_recipe_keeps_the_released_numerics(tmp_path):
    folder_cfg = replace(PRESETS["nano_30b_a3b"], moe_router_dtype="fp32")  # as read from HF
    folder_cfg = replace(folder_cfg, denoiser_scan_dtype="activation")
    recorded = imported_recipe(
        "finetune_released",
        folder_cfg,
        tmp_path,
        ParallelConfig(tensor_parallel=2, sequence_parallel=True, expert_parallel=8),
        {"name": "diffusion", "backbone_checkpoint": None},
    )
    assert recorded["model"]["moe_router_dtype"] == "fp64"
    assert recorded["model"]["denoiser_scan_dtype"] == "fp32"
    assert recorded["model"]["hidden_size"] == folder_cfg.hidden_size
