"""``twotower-convert`` as users run it (``python -m twotower_train.convert`` subprocesses):
each bad input gives one ``twotower-convert: error: …`` line and exit code 2, and an existing
output folder (passed with ``--overwrite`` where the defect is elsewhere) stays byte-identical.
Every case costs a process start (~8 s CPU), so the default suite runs a few and ``-m slow`` the
rest.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.convert.hub_folders import hub_folder, snapshot
from tests.convert.models import parity_config

REPO = Path(__file__).resolve().parents[2]


RENDEZVOUS = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK")


def convert(*args: str) -> subprocess.CompletedProcess:
    # A fresh single process: not the rendezvous of this test process's own gloo group.
    env = {k: v for k, v in os.environ.items() if k not in RENDEZVOUS}
    env.update(PYTHONPATH=str(REPO), TORCHDYNAMO_DISABLE="1", OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-m", "twotower_train.convert", *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def assert_one_error_line(proc: subprocess.CompletedProcess, expected: str) -> None:
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("twotower-convert:")]
    assert len(lines) == 1 and lines[0] == proc.stderr.strip().splitlines()[-1], proc.stderr
    assert lines[0].startswith("twotower-convert: error: ") and expected in lines[0], lines[0]


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    return hub_folder(tmp_path_factory.mktemp("hub") / "hub", parity_config())[1]


@pytest.fixture
def existing(tmp_path):
    """An output folder that must survive every failed conversion unchanged."""
    out = tmp_path / "out"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "latest").write_text("iter_0000007\n")
    (out / "notes.txt").write_text("keep me")
    return out


def _copy(hub: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(hub, tmp_path / "in"))


def _edit_tensors(folder: Path, edit) -> None:
    shard = next(folder.glob("*.safetensors"))
    tensors = load_file(shard)
    edit(tensors)
    save_file(tensors, shard, metadata={"format": "pt"})


def test_help_lists_the_subcommands():
    proc = convert("--help")
    assert proc.returncode == 0
    assert all(c in proc.stdout for c in ("import-hf", "export-hf", "import-twotower"))


def test_existing_output_needs_overwrite(hub, existing):
    before = snapshot(existing)
    assert_one_error_line(convert("import-hf", hub, existing), "already exists")
    assert snapshot(existing) == before


@pytest.mark.slow
def test_wrong_model_type(hub, tmp_path, existing):
    folder = _copy(hub, tmp_path)
    config = json.loads((folder / "config.json").read_text()) | {"model_type": "llama"}
    (folder / "config.json").write_text(json.dumps(config))
    before = snapshot(existing)
    assert_one_error_line(
        convert("import-hf", folder, existing, "--overwrite"), "model_type='llama'"
    )
    assert snapshot(existing) == before


def test_missing_tensor_is_named(hub, tmp_path, existing):
    folder = _copy(hub, tmp_path)
    _edit_tensors(folder, lambda t: t.pop("backbone.layers.2.mixer.gate.weight"))
    before = snapshot(existing)
    assert_one_error_line(
        convert("import-hf", folder, existing, "--overwrite"),
        "'backbone.layers.2.mixer.gate.weight' is missing from",
    )
    assert snapshot(existing) == before


@pytest.mark.slow
def test_shape_mismatch_names_both_shapes(hub, tmp_path, existing):
    folder = _copy(hub, tmp_path)
    _edit_tensors(folder, lambda t: t.update({"backbone.norm_f.weight": torch.ones(65)}))
    before = snapshot(existing)
    assert_one_error_line(
        convert("import-hf", folder, existing, "--overwrite"),
        "'decoder.final_norm.weight' has shape (65,) but the model built from the config "
        "expects (64,)",
    )
    assert snapshot(existing) == before


def test_tp_must_divide_the_heads(hub, existing):
    before = snapshot(existing)
    assert_one_error_line(
        convert("import-hf", hub, existing, "--overwrite", "--tp", "3"),
        "model.num_attention_heads=4 is not divisible by --tp=3",
    )
    assert snapshot(existing) == before


def test_overwrite_replaces_the_folder(hub, existing):
    proc = convert("import-hf", hub, existing, "--overwrite")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not (existing / "notes.txt").exists()
    assert (existing / "checkpoints" / "latest").read_text().strip() == "iter_0000000"
    assert sorted(p.name for p in existing.parent.iterdir()) == ["out"]  # no temporary left


@pytest.mark.slow
def test_unmapped_tensor_is_named(hub, tmp_path, existing):
    folder = _copy(hub, tmp_path)
    _edit_tensors(folder, lambda t: t.update({"backbone.layers.0.mixer.extra": torch.ones(2)}))
    before = snapshot(existing)
    assert_one_error_line(
        convert("import-hf", folder, existing, "--overwrite"),
        "have no counterpart for pattern 'M*E-E*M-' with 4 experts: backbone.layers.0.mixer.extra",
    )
    assert snapshot(existing) == before


@pytest.mark.slow
def test_ep_must_divide_the_experts(hub, existing):
    before = snapshot(existing)
    assert_one_error_line(
        convert("import-hf", hub, existing, "--overwrite", "--ep", "3"),
        "model.num_experts=4 is not divisible by --ep=3",
    )
    assert snapshot(existing) == before


@pytest.mark.slow
def test_import_twotower_refuses_a_single_tower_folder(hub, existing):
    before = snapshot(existing)
    assert_one_error_line(
        convert("import-twotower", hub, existing, "--overwrite"),
        "is read by `twotower-convert import-hf`",
    )
    assert snapshot(existing) == before


@pytest.mark.slow
def test_backbone_reference_that_does_not_verify(tmp_path, tokenizer_dir, existing):
    """A stage-2 checkpoint whose stage-1 backbone was replaced afterwards is refused."""
    from tests.convert.two_tower_models import random_two_tower
    from twotower_train import distributed
    from twotower_train.convert import commands as checkpoints

    cfg = parity_config()
    hub_a = hub_folder(tmp_path / "hub_a", cfg, seed=0)[1]
    hub_b = hub_folder(tmp_path / "hub_b", cfg, seed=1)[1]
    checkpoints.import_hf(hub_a, tmp_path / "stage1")
    distributed.initialize(seed=0)
    model = random_two_tower(cfg, seed=0)
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("_extra_state")}
    objective = {"name": "diffusion", "backbone_checkpoint": str(tmp_path / "stage1/checkpoints")}
    checkpoints.write_trainer_checkpoint(
        tmp_path / "stage2", cfg, state, objective, tp=1, ep=1, recipe="demo_twotower"
    )
    checkpoints.import_hf(hub_b, tmp_path / "stage1", overwrite=True)  # another backbone there
    before = snapshot(existing)
    proc = convert(
        "export-hf",
        tmp_path / "stage2/checkpoints",
        existing,
        "--overwrite",
        "--tokenizer",
        tokenizer_dir,
    )
    assert_one_error_line(proc, "was trained against frozen weights")
    assert "set --backbone to the checkpoint that run started from" in proc.stderr  # its option
    assert snapshot(existing) == before
