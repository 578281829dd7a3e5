"""A checkpoint written by a TP=2 (+SP) run on 2 gloo ranks resumes at TP=1 in one process."""

import pytest

from tests.training.fixtures import data_root, recipe  # noqa: F401  (fixtures)

from tests.distributed.launch import torchrun

pytestmark = pytest.mark.distributed


def test_tp2_checkpoint_resumes_at_tp1(recipe, data_root, tmp_path):
    from twotower_train.training.trainer import Trainer

    run_dir = tmp_path / "tp2"
    out = torchrun("train_tp2.py", str(data_root), str(run_dir))
    tp2 = {int(s): (float(loss), float(lr)) for _, s, loss, lr in
           (line.split() for line in out.splitlines() if line.startswith("LOSS "))}
    assert sorted(tp2) == list(range(6)), out

    cfg = recipe(
        "curriculum.phases.0.steps=6", "curriculum.phases.0.lr.warmup_steps=1",
        f"checkpoint.load_from={run_dir}/ck/iter_0000004", f"checkpoint.dir={tmp_path}/tp1",
    )
    trainer = Trainer(cfg)
    assert trainer.state.step == 4 and trainer.state.consumed_samples == {"pretrain": 16}
    trainer.train()
    trainer.close()
    resumed = {r["step"]: (r["loss"], r["lr"]) for r in trainer.logger.history}
    assert sorted(resumed) == [4, 5]
    for step in (4, 5):
        # Same weights, optimizer moments and data; TP only re-associates sums (fp32).
        assert resumed[step][0] == pytest.approx(tp2[step][0], rel=1e-5, abs=1e-5), step
        assert resumed[step][1] == tp2[step][1]
