"""A checkpoint of the pre-release adaLN-single formulation is refused with one line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from megatron.core import dist_checkpointing
from torch import nn

from twotower_train.model.two_tower import TwoTowerModel
from twotower_train.training.checkpoint import _load_sharded
from twotower_train.training.checkpoint_layout import CheckpointError


class PreReleaseAdaLN(nn.Module):
    """The names the pre-release formulation saved (a 128→128→3D MLP and one (L, 3D) table)."""

    def __init__(self, hidden_size: int, num_layers: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(128, 128), nn.SiLU(), nn.Linear(128, 3 * hidden_size))
        self.tables = nn.Parameter(torch.zeros(num_layers, 3 * hidden_size))


def test_pre_release_adaln_checkpoint_is_refused(single_process, tiny_cfg, tmp_path):
    old = TwoTowerModel.build(tiny_cfg)
    old.denoiser.adaln = PreReleaseAdaLN(tiny_cfg.hidden_size, len(tiny_cfg.pattern))
    dist_checkpointing.save({"model": old.sharded_state_dict()}, str(tmp_path))
    new = TwoTowerModel.build(tiny_cfg)
    with pytest.raises(CheckpointError) as error:
        _load_sharded({"model": new.sharded_state_dict()}, Path(tmp_path))
    message = str(error.value)
    assert "\n" not in message
    assert "pre-release adaLN-single" in message and "retrain stage 2" in message, message
