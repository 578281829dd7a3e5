"""Inference tests that need a trained checkpoint reuse the training fixtures."""

import pytest

from tests.training.fixtures import (  # noqa: F401  (fixtures)
    TINY_OVERRIDES,
    data_root,
    train,
    two_tower_checkpoint,
)


@pytest.fixture(scope="module")
def stage2_checkpoint(data_root, tmp_path_factory):
    """A self-contained two-tower checkpoint (both towers stored, random start) after two
    training steps (fp32); built once per test module that uses it."""
    from twotower_train.training.recipes import load_config

    run = tmp_path_factory.mktemp("stage2")
    cfg = load_config(
        "demo",
        [
            f"data.root={data_root}",
            f"output_dir={run}",
            *TINY_OVERRIDES,
            "objective=diffusion",
            "objective.backbone_checkpoint=none",  # random towers: the test is about placement
            "curriculum.phases.0.steps=2",
            "curriculum.phases.0.lr.warmup_steps=0",
            f"checkpoint.dir={run / 'ck'}",
        ],
    )
    train(cfg)
    return run / "ck"
