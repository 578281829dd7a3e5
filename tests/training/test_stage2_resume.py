"""Stage 2 (diffusion objective, denoiser-only checkpoints with a frozen backbone reference):
kill-and-resume is bit-identical across the phase boundary where the block size goes 32 → 16."""

from __future__ import annotations

from tests.training.fixtures import three_phases, train
from twotower_train.training.checkpoint_layout import find_latest

TIMING = {"step_time", "tokens_per_s", "mfu"}


def _records(trainer) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in trainer.logger.history]


def test_stage2_kill_and_resume_is_bit_identical_across_block_size_change(
    recipe, backbone_checkpoint, tmp_path
):
    stage2 = (
        *three_phases(2),
        "objective=diffusion",
        f"objective.backbone_checkpoint={backbone_checkpoint}",
    )
    full, _ = train(recipe(*stage2, "checkpoint.dir=null"))
    assert [r["block_size"] for r in full.logger.history] == [32, 32, 32, 32, 16, 16]

    ckdir = tmp_path / "ck"
    train(recipe(*stage2, f"checkpoint.dir={ckdir}", "training.max_steps=3"))
    assert find_latest(ckdir).name == "iter_0000003"  # mid phase 2 (S=32)
    resumed, outcome = train(recipe(*stage2, f"checkpoint.dir={ckdir}"))
    assert outcome == "finished"
    # Loss, grad norm, lr, masked-token metrics of steps 3-5: exact float equality.
    assert _records(resumed) == _records(full)[3:]
