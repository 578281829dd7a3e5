"""Start-up: ``--help`` lists the recipes and common keys without importing torch or Megatron;
CPU compatibility still applies once Megatron is imported; the known optional-package notices
are hidden; wandb's mode precedence; the run report from a metrics file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from twotower_train.training.cli import COMMON_OVERRIDES, help_text
from twotower_train.training.config import WandbMode
from twotower_train.training.logging import wandb_mode
from twotower_train.training.recipes import RECIPES_DIR, compose, top_level_recipes
from twotower_train.training.report import plot_losses, read_metrics, summarize, write_report

REPO = Path(__file__).resolve().parents[2]

_PROBE = """
import sys
sys.argv = ["twotower-train", "--help"]
from twotower_train.training.cli import main
main()
print("IMPORTED", "torch" in sys.modules, "megatron" in sys.modules)
import megatron.core
from twotower_train import cpu_compat
print("APPLIED", cpu_compat.applied())
"""


def test_help_imports_neither_torch_nor_megatron_and_cpu_compat_still_applies():
    env = {**os.environ, "TORCHDYNAMO_DISABLE": "1"}
    env.pop("TWOTOWER_DEBUG", None)
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "IMPORTED False False" in proc.stdout
    assert "APPLIED True" in proc.stdout  # applied on Megatron's import (no CUDA here)
    for name in top_level_recipes():
        assert f"\n  {name} " in proc.stdout
    # The known notices about optional GPU packages are gone (Megatron was imported above).
    assert "Transformer Engine and Apex are not installed" not in proc.stderr, proc.stderr
    assert "No CUDA runtime is found" not in proc.stderr, proc.stderr


def _keys(node, prefix=""):
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _keys(value, f"{prefix}{key}.")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _keys(value, f"{prefix}{i}.")
    yield prefix.rstrip(".")


def test_the_common_overrides_in_the_help_are_recipe_keys():
    known = set()
    for recipe in ("demo", "demo_twotower"):
        known |= set(_keys(OmegaConf.to_container(compose(recipe))))
    for override in COMMON_OVERRIDES:
        assert override.split("=")[0] in known, override
    assert str(RECIPES_DIR) in help_text()


@pytest.mark.parametrize(
    "configured, env, expected",
    [
        (WandbMode.OFFLINE, None, "offline"),
        (WandbMode.OFFLINE, "disabled", None),
        (WandbMode.ONLINE, "offline", "offline"),
        (WandbMode.DISABLED, "online", None),  # disabled in the recipe always wins
        (WandbMode.ONLINE, None, "online"),
    ],
)
def test_wandb_mode_precedence(monkeypatch, configured, env, expected):
    if env is None:
        monkeypatch.delenv("WANDB_MODE", raising=False)
    else:
        monkeypatch.setenv("WANDB_MODE", env)
    assert wandb_mode(configured) == expected


def _record(step, loss, phase=0, **extra):
    return {
        "step": step,
        "loss": loss,
        "phase": f"p{phase}",
        "phase_index": phase,
        "block_size": 32 // (phase + 1),
        "lr": 1e-3,
        "tokens_per_s": 10.0,
        **extra,
    }


def test_report_reads_each_step_once_and_plots(tmp_path):
    records = [
        _record(0, 5.0),
        _record(1, 4.0, **{"eval/loss": 4.5}),
        _record(2, 3.9, phase=1, accuracy=0.2),
        # step 2 again: recomputed after a resume from the step-2 checkpoint
        _record(2, 3.5, phase=1, accuracy=0.25, **{"eval/loss": 3.7}),
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    read = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in read] == [0, 1, 2] and read[-1]["loss"] == 3.5
    summary = summarize(
        read,
        outcome="finished",
        steps_done=3,
        stop_step=3,
        steps_this_start=1,
        wall_seconds=2.0,
        train_seconds=1.0,
        tokens=256,
    )
    assert summary["final_loss"] == 3.5 and summary["final_eval_loss"] == 3.7
    assert summary["final_eval_step"] == 3 and summary["final_metrics"] == {"accuracy": 0.25}
    assert summary["tokens_per_s"] == 256.0
    lines = write_report(tmp_path, summary)
    assert lines[0].startswith("summary: finished at step 3/3 | loss 3.5000 | eval loss 3.7000")
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    png = plot_losses(read, tmp_path / "again.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "loss_curve.png").stat().st_size > 1000


def test_missing_gpu_extras_is_one_list_on_a_gpu_host_and_empty_on_a_cpu(monkeypatch):
    from twotower_train import backends

    assert backends.cuda_available() or backends.missing_gpu_extras() == []
    monkeypatch.setattr(backends, "cuda_available", lambda: True)
    monkeypatch.setattr(backends, "have_transformer_engine", lambda: False)
    monkeypatch.setattr(backends, "have_mamba_kernels", lambda: True)
    monkeypatch.setattr(backends, "_importable", lambda module: False)
    assert backends.missing_gpu_extras() == ["transformer-engine", "apex (built from source)"]
