"""Run folders: a resume needs the checkpoint's recipe (model, objective, trained curriculum,
batch / seed / optimizer keys); what may change still resumes; a fresh run never reuses a
folder that holds one. :func:`plan_run` only reads, so each case is checked without training."""

from __future__ import annotations

import copy
import shutil

import pytest

from tests.training.fixtures import TINY_OVERRIDES
from twotower_train.training.checkpoint_layout import CheckpointError
from twotower_train.training.recipes import load_config
from twotower_train.training.run_folder import identity, plan_run

STEPS = ["curriculum.phases.0.steps=4", "curriculum.phases.0.lr.warmup_steps=0"]


@pytest.fixture(scope="module")
def trained(data_root, tmp_path_factory):
    """A run folder whose tiny AR run stopped at step 2 of 4 (checkpoint iter_0000002)."""
    from twotower_train.training.trainer import Trainer

    run = tmp_path_factory.mktemp("runs") / "first"
    cfg = load_config("demo", _overrides(data_root, run, "training.max_steps=2"))
    trainer = Trainer(cfg)
    trainer.train()
    trainer.close()
    return run


def _overrides(data_root, run, *extra):
    return [f"data.root={data_root}", f"output_dir={run}", *TINY_OVERRIDES, *STEPS, *extra]


def _plan(data_root, run, *extra):
    cfg = load_config("demo", _overrides(data_root, run, *extra))
    return plan_run(cfg.output_dir, cfg.checkpoint, cfg.raw)


def test_same_recipe_resumes_and_lists_what_may_change(trained, data_root):
    plan = _plan(
        data_root,
        trained,
        "training.max_steps=3",
        "training.log_interval=2",
        "training.eval_interval=2",
        "training.micro_batch_size=1",
        "checkpoint.save_interval=1",
        "logging.wandb_mode=offline",
    )
    assert plan.output_dir == str(trained)
    assert plan.resume_from == str(trained / "checkpoints" / "iter_0000002")
    (note,) = plan.notes
    for key in (
        "training.max_steps (2 → 3)",
        "training.log_interval (1 → 2)",
        "training.micro_batch_size (2 → 1)",
        "logging.wandb_mode (disabled → offline)",
    ):
        assert key in note, note


@pytest.mark.parametrize(
    "override, named",
    [
        ("model.hidden_size=32", "model.hidden_size (checkpoint 64, now 32)"),
        ("+model.mamba_chunk_size=32", "model.mamba_chunk_size (checkpoint 16, now 32)"),
        ("objective=diffusion", "objective.name (checkpoint 'ar', now 'diffusion')"),
        ("curriculum.phases.0.steps=8", "curriculum.phases.0.steps (checkpoint 4, now 8)"),
        ("curriculum.phases.0.lr.peak=1e-3", "curriculum.phases.0.lr.peak"),
        ("training.global_batch_size=8", "training.global_batch_size (checkpoint 4, now 8)"),
        ("training.seed=7", "training.seed"),
        ("data.seq_length=32", "data.seq_length (checkpoint 64, now 32)"),
        ("optimizer.clip_grad=0.5", "optimizer.clip_grad (checkpoint 1.0, now 0.5)"),
    ],
)
def test_a_different_recipe_stops_naming_the_keys_and_the_ways_out(
    trained, data_root, override, named
):
    with pytest.raises(CheckpointError) as error:
        _plan(data_root, trained, override)
    message = str(error.value)
    assert named in message and "\n" not in message
    assert "run_name=NAME" in message and "checkpoint.resume=false" in message


def test_a_phase_added_after_the_trained_ones_resumes(trained, data_root):
    cfg = load_config("demo", _overrides(data_root, trained))
    recipe = copy.deepcopy(cfg.raw)
    phases = recipe["curriculum"]["phases"]
    phases.append({**phases[0], "name": "more", "steps": 8})
    plan = plan_run(cfg.output_dir, cfg.checkpoint, recipe)
    assert plan.resume_from.endswith("iter_0000002")
    # Only the phases already trained are compared.
    assert "curriculum.phases.1.steps" not in identity(recipe, trained_phases=1)
    assert identity(recipe, trained_phases=2)["curriculum.phases.1.steps"] == 8


def test_resume_false_starts_fresh_next_to_the_old_run(trained, data_root):
    before = sorted(p.name for p in (trained / "checkpoints").iterdir())
    plan = _plan(data_root, trained, "checkpoint.resume=false", "model.hidden_size=32")
    fresh = f"{trained}-2"
    assert plan.output_dir == fresh and plan.resume_from is None
    assert plan.checkpoint_dir == f"{fresh}/checkpoints"
    assert "nothing is deleted" in plan.notes[0]
    assert sorted(p.name for p in (trained / "checkpoints").iterdir()) == before


def test_a_folder_with_metrics_but_no_checkpoint_is_not_reused(data_root, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 0, "loss": 1.0}\n')
    (tmp_path / "run-2").mkdir()  # taken: the next free sibling is -3
    plan = _plan(data_root, run)
    assert plan.output_dir == f"{run}-3" and "no checkpoint to resume" in plan.notes[0]


def test_load_from_problems_are_one_line(trained, data_root, tmp_path):
    with pytest.raises(CheckpointError, match=r"checkpoint.load_from=\S+ does not exist; point"):
        _plan(data_root, tmp_path / "new", f"checkpoint.load_from={tmp_path}/nowhere")
    partial = tmp_path / "ck" / "iter_0000003.tmp"
    shutil.copytree(trained / "checkpoints" / "iter_0000002", tmp_path / "ck" / "iter_0000002")
    partial.mkdir()
    with pytest.raises(CheckpointError) as error:
        _plan(data_root, tmp_path / "new", f"checkpoint.load_from={partial}")
    assert "an interrupted save" in str(error.value)
    assert str(tmp_path / "ck" / "iter_0000002") in str(error.value)  # the one that loads


def test_a_broken_latest_pointer_names_the_newest_complete_checkpoint(trained, data_root, tmp_path):
    run = tmp_path / "copy"
    shutil.copytree(trained, run)
    (run / "checkpoints" / "latest").write_text("iter_0000009\n")
    with pytest.raises(CheckpointError) as error:
        _plan(data_root, run)
    assert "names iter_0000009, which is not a complete checkpoint" in str(error.value)
    assert "the newest intact one is iter_0000002" in str(error.value)
    assert "checkpoint.fallback=true" in str(error.value)


def test_a_run_that_is_already_done_says_so_and_trains_nothing(trained, data_root, capsys):
    from twotower_train.training.trainer import ALREADY_DONE, Trainer

    cfg = load_config("demo", _overrides(data_root, trained, "training.max_steps=2"))
    trainer = Trainer(cfg)
    result = trainer.train()
    trainer.close()
    assert result.outcome == ALREADY_DONE and result.run_dir == trained
    assert trainer.logger.history == []
    out = capsys.readouterr().out
    assert "nothing to train: " in out and "is at step 2, training.max_steps=2" in out
