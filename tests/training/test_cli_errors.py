"""Every user error ``twotower-train`` meets — in Hydra's parsing, in recipe validation and after
it (checkpoints, the frozen backbone, the world size) — is one stderr line
``twotower-train: error: ...`` with exit code 2 and no traceback; ``--debug`` shows the traceback.
Each case runs the CLI as a subprocess; the checkpoints it needs are trained once, in-process.
The cases that need a stage-2 run (or repeat an in-process check) are marked slow."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.training.fixtures import TINY_OVERRIDES
from twotower_train.training.recipes import load_config

REPO = Path(__file__).resolve().parents[2]
STEPS = ["curriculum.phases.0.steps=4", "curriculum.phases.0.lr.warmup_steps=0"]
STAGE2 = [
    "--config-name",
    "demo_twotower",
    *[f"curriculum.phases.{i}.steps=2" for i in range(3)],
    *[f"curriculum.phases.{i}.lr.warmup_steps=0" for i in range(3)],
]


def _cli(*args: str, debug: bool = False) -> subprocess.CompletedProcess:
    rendezvous = {"MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK"}
    env = {k: v for k, v in os.environ.items() if k not in rendezvous | {"TWOTOWER_DEBUG"}}
    env.update(TORCHDYNAMO_DISABLE="1", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "twotower_train.training", *args, *(["--debug"] if debug else [])]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def _one_line(proc: subprocess.CompletedProcess) -> str:
    """The single error line; nothing else on stderr that looks like a traceback."""
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("twotower-train: ")]
    assert len(errors) == 1 and errors[0].startswith("twotower-train: error: "), proc.stderr
    return errors[0]


def _train(data_root, run, recipe, *extra):
    from twotower_train.training.trainer import Trainer

    trainer = Trainer(
        load_config(
            recipe, [f"data.root={data_root}", *TINY_OVERRIDES, f"output_dir={run}", *extra]
        )
    )
    trainer.train()
    trainer.close()
    return run


@pytest.fixture(scope="module")
def stage1(data_root, tmp_path_factory):
    """A tiny stage-1 run stopped at step 2 of 4 (checkpoints iter_0000001, iter_0000002)."""
    run = tmp_path_factory.mktemp("cli_runs") / "stage1"
    return _train(
        data_root, run, "demo", *STEPS, "training.max_steps=2", "checkpoint.save_interval=1"
    )


@pytest.fixture(scope="module")
def stage2(stage1, data_root):
    """One stage-2 step from the stage-1 run's latest checkpoint."""
    return _train(
        data_root,
        stage1.parent / "stage2",
        "demo_twotower",
        *STAGE2[2:],
        "training.max_steps=1",
        f"objective.backbone_checkpoint={stage1}/checkpoints",
    )


def _args(data_root, run, *extra):
    return [f"data.root={data_root}", f"output_dir={run}", *TINY_OVERRIDES, *extra]


def test_misspelled_key_suggests_the_valid_one():
    line = _one_line(_cli("training.max_step=5"))
    assert "training.max_step is not a key of recipe 'demo'" in line
    assert "did you mean training.max_steps=5?" in line


def test_config_name_after_the_overrides_is_read():
    line = _one_line(_cli("training.max_step=5", "--config-name", "demo_twotower"))
    assert "training.max_step is not a key of recipe 'demo_twotower'" in line


def test_stage2_without_a_backbone_is_refused(data_root, tmp_path):
    run = tmp_path / "run"
    line = _one_line(_cli(*STAGE2, *_args(data_root, run)))
    assert "objective.backbone_checkpoint is not set" in line
    assert "objective.backbone_checkpoint=none" in line
    assert not (run / "checkpoints").exists() and not (run / "metrics.jsonl").exists()


def test_unknown_group_option_lists_the_options():
    line = _one_line(_cli("model=tinyy"))
    assert "model=tinyy: no such option" in line and "small, tiny" in line


def test_missing_load_from(data_root, tmp_path):
    line = _one_line(
        _cli(
            *_args(
                data_root,
                tmp_path / "run",
                *STEPS,
                f"checkpoint.load_from={tmp_path}/nowhere/iter_0000100",
            )
        )
    )
    assert f"checkpoint.load_from={tmp_path}/nowhere/iter_0000100 does not exist" in line


@pytest.mark.slow  # the same message is checked in-process in test_run_folder.py
def test_interrupted_checkpoint(stage1, data_root, tmp_path):
    partial = stage1 / "checkpoints" / "iter_0000003.tmp"
    partial.mkdir(exist_ok=True)
    line = _one_line(
        _cli(*_args(data_root, tmp_path / "run", *STEPS, f"checkpoint.load_from={partial}"))
    )
    assert "is an interrupted save" in line and "iter_0000002" in line


def test_missing_backbone_checkpoint(data_root, tmp_path):
    line = _one_line(
        _cli(
            *STAGE2,
            *_args(
                data_root, tmp_path / "run", f"objective.backbone_checkpoint={tmp_path}/nowhere"
            ),
        )
    )
    assert "objective.backbone_checkpoint=" in line and "does not exist" in line


def test_world_size_does_not_fit_the_parallel_sizes(data_root, tmp_path):
    line = _one_line(_cli(*_args(data_root, tmp_path / "run", *STEPS, "parallelism=tp2")))
    assert "world size 1 does not fit parallelism.tensor_parallel=2" in line


def test_resume_with_another_model_names_the_keys(stage1, data_root):
    line = _one_line(_cli(*_args(data_root, stage1, *STEPS, "model.hidden_size=32")))
    assert "model.hidden_size (checkpoint 64, now 32)" in line
    assert "run_name=NAME" in line and "checkpoint.resume=false" in line


@pytest.mark.slow
def test_backbone_of_another_shape(stage1, data_root, tmp_path):
    line = _one_line(
        _cli(
            *STAGE2,
            *_args(
                data_root,
                tmp_path / "run",
                "model.hidden_size=32",
                f"objective.backbone_checkpoint={stage1}/checkpoints",
            ),
        )
    )
    assert "cannot load" in line and "shape mismatch" in line


@pytest.mark.slow
def test_backbone_reference_that_does_not_verify(stage1, stage2, data_root):
    line = _one_line(
        _cli(
            *STAGE2,
            *_args(
                data_root,
                stage2,
                f"objective.backbone_checkpoint={stage1}/checkpoints/iter_0000001",
            ),
        )
    )
    assert "was trained against frozen weights" in line


@pytest.mark.slow
def test_debug_shows_the_traceback(data_root, tmp_path):
    proc = _cli(*_args(data_root, tmp_path / "run", *STEPS, "parallelism=tp2"), debug=True)
    assert proc.returncode != 0 and "Traceback" in proc.stderr
    assert "world size 1 does not fit" in proc.stderr
