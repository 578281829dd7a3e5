"""End-to-end trainer runs on the tiny model (CPU, fp32): learning, curriculum transitions,
exact resume, atomic checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.training.fixtures import three_phases, train
from twotower_train.training import checkpoint as ckpt
from twotower_train.training.checkpoint_layout import find_latest
from twotower_train.training.objectives import OBJECTIVES
from twotower_train.training.objectives.ar import ARObjective


class RecordingAR(ARObjective):
    """AR objective that records what each micro-batch saw (phase, block size, tokens)."""

    seen: list[tuple[int, str, int, torch.Tensor]] = []

    def loss(self, model, batch, phase, generator):
        step = phase.phase_start_step + phase.step_in_phase
        RecordingAR.seen.append((step, phase.phase.name, phase.phase.block_size, batch["tokens"]))
        return super().loss(model, batch, phase, generator)


def test_stage1_ar_loss_decreases(recipe):
    cfg = recipe(
        "curriculum.phases.0.steps=30",
        "curriculum.phases.0.lr.warmup_steps=2",
        "curriculum.phases.0.lr.peak=3e-3",
        "checkpoint.dir=null",
    )
    trainer, outcome = train(cfg)
    losses = [r["loss"] for r in trainer.logger.history]
    assert outcome == "finished" and len(losses) == 30
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 1.0, losses
    first = trainer.logger.history[0]
    for key in ("phase", "block_size", "lr", "grad_norm", "tokens_per_s", "accuracy"):
        assert key in first
    assert "mfu" not in first  # a CPU has no known peak: no made-up MFU


def test_three_phases_switch_block_size_blend_and_wsd(recipe, data_root, monkeypatch):
    from twotower_train.data import open_indexed

    monkeypatch.setitem(OBJECTIVES, "ar", f"{__name__}:RecordingAR")
    RecordingAR.seen = []
    cfg = recipe(*three_phases(4, wiki_then_chat=True, data_root=data_root), "checkpoint.dir=null")
    trainer, _ = train(cfg)
    history = trainer.logger.history
    assert [r["phase"] for r in history] == ["phase1_s32"] * 4 + ["phase2_s32"] * 4 + [
        "phase2_s16"
    ] * 4
    assert [r["block_size"] for r in history] == [32] * 8 + [16] * 4
    # Objective saw the active block size at every step.
    assert {(s, b) for s, _, b, _ in RecordingAR.seen} == {
        (s, 32 if s < 8 else 16) for s in range(12)
    }

    # Blend: phase 1 reads only the wiki dataset, phases 2-3 only chitchat.
    def vocab(name):
        ds = open_indexed(str(data_root / "indexed" / name))
        return set(torch.cat([torch.as_tensor(ds[i]) for i in range(len(ds))]).tolist())

    wiki, chat = vocab("wiki"), vocab("chitchat")
    for step, _, _, tokens in RecordingAR.seen:
        ids = set(tokens.flatten().tolist())
        assert ids <= (wiki if step < 4 else chat), step
        assert not ids <= (chat if step < 4 else wiki), step
    # WSD per phase: peak at the phase start (no warmup), exactly min at its last step.
    lrs = [r["lr"] for r in history]
    for i, start in enumerate((0, 4, 8)):
        assert lrs[start] == pytest.approx(1e-3 * (i + 1))
        assert lrs[start + 3] == pytest.approx(1e-5)
    # Consumed samples restart per phase.
    assert [r["consumed_samples"] for r in history[3:6]] == [16, 4, 8]


@pytest.mark.parametrize("kill_at", [3, 6])
def test_kill_and_resume_is_bit_identical(recipe, tmp_path, kill_at):
    full, _ = train(recipe(*three_phases(4), "checkpoint.dir=null"))
    ckdir = tmp_path / "ck"
    train(recipe(*three_phases(4), f"checkpoint.dir={ckdir}", f"training.max_steps={kill_at}"))
    assert find_latest(ckdir).name == f"iter_{kill_at:07d}"
    resumed, outcome = train(recipe(*three_phases(4), f"checkpoint.dir={ckdir}"))
    assert outcome == "finished"
    expected = [(r["step"], r["loss"], r["grad_norm"], r["lr"]) for r in full.logger.history]
    got = [(r["step"], r["loss"], r["grad_norm"], r["lr"]) for r in resumed.logger.history]
    assert got == expected[kill_at:]  # exact float equality, across the phase boundaries


def test_crash_mid_save_keeps_previous_checkpoint(recipe, tmp_path, monkeypatch):
    ckdir = tmp_path / "ck"
    args = (
        "curriculum.phases.0.steps=6",
        "curriculum.phases.0.lr.warmup_steps=0",
        f"checkpoint.dir={ckdir}",
        "checkpoint.save_interval=2",
    )
    real_write = ckpt._write_shards

    def crash_on_second_save(state_dict, directory):
        if Path(directory).name.startswith("iter_0000004"):
            (Path(directory) / "partial.distcp").write_bytes(b"half a shard")
            raise OSError("disk full (injected)")
        real_write(state_dict, directory)

    monkeypatch.setattr(ckpt, "_write_shards", crash_on_second_save)
    with pytest.raises(OSError, match="injected"):
        train(recipe(*args))
    assert (ckdir / "latest").read_text().strip() == "iter_0000002"
    assert (ckdir / "iter_0000004.tmp").is_dir() and not (ckdir / "iter_0000004").exists()
    assert find_latest(ckdir) == ckdir / "iter_0000002"

    monkeypatch.setattr(ckpt, "_write_shards", real_write)
    resumed, outcome = train(recipe(*args, "checkpoint.keep_last=2"))
    assert outcome == "finished" and resumed.logger.history[0]["step"] == 2
    assert sorted(p.name for p in ckdir.iterdir()) == ["iter_0000004", "iter_0000006", "latest"]
