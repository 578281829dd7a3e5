"""Recipes compose into typed configs; bad values fail before training with one message."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from twotower_train.errors import ConfigError
from twotower_train.training.config import Precision
from twotower_train.training.recipes import load_config

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["+training.bogus=1"], "training: unknown key(s) ['bogus']"),
        (["+training.max_step=5"], "unknown key(s) ['max_step']; did you mean 'max_steps'?"),
        (["+curriculum.phases.0.bogus=1"], "curriculum.phases[0]: unknown key(s) ['bogus']"),
        (["curriculum.phases.0.block_size=48"], "block_size=48 must divide seq_length=64"),
        (["+model.mask_token_id=600"], "model.mask_token_id=600 is outside the vocabulary"),
        (["optimizer.precision=fp8"], "optimizer.precision='fp8' is not one of"),
        (["training.recompute=some"], "training.recompute='some' is not one of"),
        (["training.global_batch_size=5"], "training.global_batch_size=5 is not a multiple"),
        (["parallelism.tensor_parallel=3"], "parallelism.tensor_parallel=3"),
        (
            ["parallelism=tp2", "parallelism.sequence_parallel=false"],
            "set parallelism.sequence_parallel=true",
        ),
        (["+objective.bogus=1"], "objective: unknown key(s) ['bogus']"),
    ],
)
def test_bad_values_name_the_key(recipe, overrides, expected):
    with pytest.raises(ConfigError) as error:
        recipe(*overrides)
    assert expected in str(error.value)


def test_missing_data_names_prefix_and_command(recipe, tmp_path):
    missing = tmp_path / "nowhere" / "wiki"
    with pytest.raises(ConfigError) as error:
        recipe(f"data.blends.broad=[{{prefix:{missing},weight:1.0}}]")
    message = str(error.value)
    assert f"{missing}.bin" in message and "curriculum.phases[0]" in message
    assert "python -m data_tools.demo_corpus --out" in message


def test_nano_recipe_has_the_released_numbers():
    cfg = load_config("nano_30b_a3b", check_data=False)
    phases = cfg.curriculum.phases
    assert [p.block_size for p in phases] == [32, 32, 16]
    assert [(p.lr.peak, p.lr.min) for p in phases] == [(1e-4, 1e-6)] * 3
    assert phases[1].blend == phases[2].blend != phases[0].blend
    assert sum(p.tokens for p in phases) == pytest.approx(2.1e12)
    assert cfg.optimizer.precision is Precision.BF16 and cfg.parallelism.expert_parallel == 8
    assert cfg.objective_name == "diffusion" and cfg.model.num_layers == 52
    assert cfg.data.seq_length == 8192


def test_cli_prints_one_line_and_exits_2(tmp_path):
    env = {**os.environ, "TORCHDYNAMO_DISABLE": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "twotower_train.training",
            f"data.root={tmp_path}/none",
            f"output_dir={tmp_path}/run",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "twotower-train: error:" in line]
    assert len(errors) == 1 and "data.tokenizer=" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr
