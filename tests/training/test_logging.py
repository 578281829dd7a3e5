"""MFU arithmetic, the console progress line and what a run leaves in its folder."""

import json

import pytest
from omegaconf import OmegaConf

from twotower_train.model.config import preset
from twotower_train.model.sizes import count_parameters
from twotower_train.training.config import Precision
from twotower_train.training.logging import format_progress, mfu, peak_tflops_by_name
from twotower_train.training.objectives import transformer_flops_per_token


def test_flops_per_token_is_6n_plus_attention():
    cfg = preset("tiny")
    _, active = count_parameters(cfg)
    attention = 6 * cfg.pattern.count("*") * cfg.num_attention_heads * cfg.head_dim * 256
    assert transformer_flops_per_token(cfg, 256) == 6 * active + attention


@pytest.mark.parametrize(
    "name, precision, expected",
    [
        ("NVIDIA H100 80GB HBM3", Precision.BF16, 989.0),
        ("NVIDIA H100 PCIe", Precision.BF16, 756.0),  # the longer key wins over "H100"
        ("NVIDIA H200", Precision.FP32, 494.0),
        ("NVIDIA GeForce RTX 4090", Precision.BF16, None),  # not in the table: no guess
    ],
)
def test_peak_tflops_by_device_name(name, precision, expected):
    assert peak_tflops_by_name(name, precision) == expected


def test_mfu_and_progress_line():
    assert mfu(1000.0, 1e9, peak_tflops=1.0, devices=2) == pytest.approx(0.5)
    line = format_progress(
        {
            "phase": "phase2_s16",
            "block_size": 16,
            "step": 9,
            "loss": 2.5,
            "lr": 1e-4,
            "grad_norm": 0.75,
            "tokens_per_s": 12345.0,
            "mfu": 0.31,
        },
        total_steps=100,
    )
    assert line.startswith("[phase2_s16 S=16] step 10/100 | loss 2.5000 | lr 1.000e-04")
    assert "grad-norm 0.750" in line and "12,345 tok/s" in line and "MFU 31.00%" in line


def test_no_mfu_without_a_known_peak():
    assert mfu(1000.0, 1e9, peak_tflops=None, devices=1) is None  # a CPU: no made-up peak
    line = format_progress(
        {
            "phase": "p",
            "block_size": 16,
            "step": 0,
            "loss": 2.5,
            "lr": 1e-4,
            "grad_norm": 0.75,
            "tokens_per_s": 100.0,
        },
        total_steps=10,
    )
    assert line.endswith("100 tok/s") and "MFU" not in line


def test_a_run_shorter_than_the_log_interval_reports_no_loss(tmp_path):
    from twotower_train.training.report import summarize, write_report

    summary = summarize(
        [],
        outcome="max_steps",
        steps_done=2,
        stop_step=2,
        steps_this_start=2,
        wall_seconds=1.0,
        train_seconds=0.5,
        tokens=100,
    )
    first = write_report(tmp_path, summary)[0]
    assert "no step logged yet (training.log_interval)" in first and "None" not in first


def test_the_run_folder_holds_the_run_report(recipe, tmp_path):
    from twotower_train.training.trainer import Trainer

    cfg = recipe(
        "curriculum.phases.0.steps=3",
        "curriculum.phases.0.lr.warmup_steps=0",
        "checkpoint.dir=null",
        "logging.wandb_mode=offline",
        "logging.tensorboard=true",
        "training.max_steps=2",
    )
    trainer = Trainer(cfg)
    result = trainer.train()
    trainer.close()
    run = tmp_path / "run"
    assert result.outcome == "max_steps" and result.run_dir == run
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
    assert list((run / "wandb").glob("offline-run-*/run-*.wandb"))
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    console = (run / "console.log").read_text()
    assert "step 2/2 |" in console  # the total is where this run stops, not the curriculum's 3
    assert "summary: max_steps at step 2/2" in console
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps_this_start"] == 2 and summary["tokens_per_s"] > 0
    assert (run / "loss_curve.png").is_file()
    recipe_file = OmegaConf.load(run / "recipe.yaml")
    assert recipe_file.training.max_steps == 2 and recipe_file.output_dir == str(run)
