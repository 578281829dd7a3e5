"""Benchmark smoke tests reuse the training fixtures (tiny data, tiny stage-1 and stage-2
checkpoints)."""

from tests.training.fixtures import (  # noqa: F401
    backbone_checkpoint,
    data_root,
    two_tower_checkpoint,
)
