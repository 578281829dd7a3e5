"""The frozen-backbone reference of stage-2 checkpoints: a content fingerprint of the backbone
checkpoint (compared) plus its location (only for finding it again).

Guarantees checked: another backbone of the same shapes is detected — given under another path
or swapped in under the same path — by a resume and by ``load_trained_model``; a moved backbone
or run tree still resumes / loads; a relative path from another working directory fails with
one line naming ``objective.backbone_checkpoint``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.training.fixtures import TINY_OVERRIDES, three_phases, train, train_backbone
from twotower_train.errors import ConfigError
from twotower_train.training.checkpoint_layout import CheckpointError
from twotower_train.training.fingerprint import (
    WHOLE_CHUNK,
    WINDOW,
    WINDOWS,
    checkpoint_fingerprint,
)


def _stage2(data_root: Path, run: Path, backbone, *extra: str):
    from twotower_train.training.recipes import load_config

    return load_config(
        "demo",
        [
            f"data.root={data_root}",
            f"output_dir={run}",
            f"checkpoint.dir={run}/ck",
            *TINY_OVERRIDES,
            *three_phases(2),
            "objective=diffusion",
            f"objective.backbone_checkpoint={backbone}",
            *extra,
        ],
    )


@pytest.fixture(scope="module")
def tree(data_root, backbone_checkpoint, tmp_path_factory) -> Path:
    """``<tree>/stage1`` (backbone root) and ``<tree>/stage2/ck`` (2 stage-2 steps), trained
    elsewhere and then moved here: the absolute paths the checkpoint recorded are gone."""
    root = tmp_path_factory.mktemp("frozen")
    original = root / "original"
    shutil.copytree(backbone_checkpoint, original / "stage1")
    train(_stage2(data_root, original / "stage2", original / "stage1", "training.max_steps=2"))
    shutil.move(original, root / "tree")
    return root / "tree"


@pytest.fixture(scope="module")
def other_backbone(data_root, tmp_path_factory) -> Path:
    """A stage-1 checkpoint of the same shapes with other weights (another seed)."""
    return train_backbone(data_root, tmp_path_factory.mktemp("other"), "training.seed=7")


def _copy(tree: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tree, tmp_path / "copy"))


def _iter_folder(root: Path) -> Path:
    return root / (root / "latest").read_text().strip()


def test_fingerprint_follows_content_not_location(backbone_checkpoint, other_backbone, tmp_path):
    folder = _iter_folder(backbone_checkpoint)
    moved = Path(shutil.copytree(folder, tmp_path / "moved"))
    assert checkpoint_fingerprint(moved) == checkpoint_fingerprint(folder)
    assert checkpoint_fingerprint(_iter_folder(other_backbone)) != checkpoint_fingerprint(folder)
    # One byte of the embedding's data changed.
    from torch.distributed.checkpoint import FileSystemReader

    storage = next(
        v
        for k, v in FileSystemReader(str(moved)).read_metadata().storage_data.items()
        if k.fqn == "embedding.word_embeddings.weight"
    )
    assert storage.length > WHOLE_CHUNK  # sampled, not read whole
    data = moved / storage.relative_path
    raw = bytearray(data.read_bytes())
    step = (storage.length - WINDOW) // (WINDOWS - 1)
    raw[storage.offset + step + WINDOW // 2] ^= 0xFF  # inside the second window (weight data)
    data.write_bytes(bytes(raw))
    assert checkpoint_fingerprint(moved) != checkpoint_fingerprint(folder)


def test_moved_run_resumes_with_the_new_backbone_path(tree, data_root, tmp_path):
    copy = _copy(tree, tmp_path)
    trainer, outcome = train(
        _stage2(data_root, copy / "stage2", copy / "stage1", "training.max_steps=3")
    )
    assert outcome == "max_steps"
    assert [r["step"] for r in trainer.logger.history] == [2]


def test_relative_backbone_path_from_another_working_directory(
    tree, data_root, tmp_path, monkeypatch
):
    copy = _copy(tree, tmp_path)
    monkeypatch.chdir(copy)  # the recipe's relative path resolves here: resumes
    trainer, _ = train(_stage2(data_root, copy / "stage2", "stage1", "training.max_steps=3"))
    assert [r["step"] for r in trainer.logger.history] == [2]

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    with pytest.raises(ConfigError) as error:
        train(_stage2(data_root, copy / "stage2", "stage1", "training.max_steps=4"))
    message = str(error.value)
    assert "\n" not in message and message.startswith("objective.backbone_checkpoint='stage1'")
    assert "working directory" in message


@pytest.mark.parametrize("how", ["other path", "same path"])
def test_resume_against_another_backbone_fails_naming_the_key(
    tree, other_backbone, data_root, tmp_path, how
):
    copy = _copy(tree, tmp_path)
    backbone = other_backbone
    if how == "same path":  # the folder the run started from now holds other weights
        shutil.rmtree(copy / "stage1")
        shutil.copytree(other_backbone, copy / "stage1")
        backbone = copy / "stage1"
    with pytest.raises(CheckpointError) as error:
        train(_stage2(data_root, copy / "stage2", backbone, "training.max_steps=3"))
    message = str(error.value)
    assert "\n" not in message and "set objective.backbone_checkpoint to" in message, message
    assert not (copy / "stage2" / "ck" / "iter_0000003").exists()


def test_load_trained_model_finds_a_moved_tree_and_checks_the_backbone(
    tree, other_backbone, tmp_path, single_process
):
    from twotower_train.inference.load import load_trained_model

    copy = _copy(tree, tmp_path)
    model, cfg = load_trained_model(copy / "stage2" / "ck")  # via the path relative to it
    assert cfg.objective_options["backbone_checkpoint"] == str(_iter_folder(copy / "stage1"))
    assert not model.training

    shutil.move(copy / "stage1", tmp_path / "backbone_elsewhere")
    with pytest.raises(CheckpointError) as error:
        load_trained_model(copy / "stage2" / "ck")
    message = str(error.value)
    assert "\n" not in message and "pass backbone_checkpoint=<folder>" in message, message
    load_trained_model(copy / "stage2" / "ck", backbone_checkpoint=tmp_path / "backbone_elsewhere")

    shutil.copytree(other_backbone, copy / "stage1")  # other weights where it looks first
    with pytest.raises(CheckpointError, match="set backbone_checkpoint to"):  # the API's own
        load_trained_model(copy / "stage2" / "ck")
