"""Resuming from a damaged checkpoint through the CLI: a truncated or missing file of the
``latest`` checkpoint stops the run with one line naming the file and the newest intact
checkpoint; ``checkpoint.fallback=true`` resumes from that one (and the next save replaces the
damaged folder, which is kept aside, not overwritten)."""

from __future__ import annotations

import shutil

import pytest

from tests.training.test_cli_errors import STEPS, _args, _cli, _one_line, _train
from twotower_train.training import integrity
from twotower_train.training.checkpoint import read_train_state
from twotower_train.training.checkpoint_layout import find_latest


@pytest.fixture(scope="module")
def two_saves(data_root, tmp_path_factory):
    """A stage-1 run stopped at step 2 of 4 with checkpoints iter_0000001 and iter_0000002."""
    run = tmp_path_factory.mktemp("damaged") / "stage1"
    return _train(
        data_root, run, "demo", *STEPS, "training.max_steps=2", "checkpoint.save_interval=1"
    )


@pytest.fixture
def copy(two_saves, tmp_path):
    return shutil.copytree(two_saves, tmp_path / "run")


def test_manifest_detects_what_a_size_shows(two_saves, tmp_path):
    folder = shutil.copytree(two_saves / "checkpoints" / "iter_0000002", tmp_path / "iter_0000002")
    assert integrity.damage(folder) is None
    (folder / "metadata.json").unlink()
    assert integrity.damage(folder) == f"{folder / 'metadata.json'} is missing"


@pytest.mark.parametrize("name", [".metadata", "__0_0.distcp"])
def test_damaged_latest_names_the_file_and_the_way_out(copy, data_root, name):
    damaged = copy / "checkpoints" / "iter_0000002" / name
    damaged.write_bytes(damaged.read_bytes()[:-7])
    line = _one_line(_cli(*_args(data_root, copy, *STEPS)))
    assert f"{damaged} is truncated" in line
    assert "checkpoint.fallback=true" in line and "iter_0000001" in line


def test_fallback_resumes_from_the_newest_intact_checkpoint(copy, data_root):
    damaged = copy / "checkpoints" / "iter_0000002" / "metadata.json"
    damaged.unlink()
    proc = _cli(
        *_args(
            data_root,
            copy,
            *STEPS,
            "training.max_steps=3",
            "checkpoint.save_interval=1",
            "checkpoint.fallback=true",
        )
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming from the newest intact checkpoint" in proc.stdout
    assert "at step 1;" in proc.stdout  # "resumed from .../iter_0000001 at step 1"
    latest = find_latest(copy / "checkpoints")
    assert read_train_state(latest).step == 3 and integrity.damage(latest) is None
    assert list((copy / "checkpoints").glob("iter_0000002.damaged-*"))  # kept aside
    assert integrity.damage(copy / "checkpoints" / "iter_0000002") is None  # saved again
