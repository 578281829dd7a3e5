"""Inference tests that need a trained checkpoint reuse the training fixtures."""

from tests.training.fixtures import data_root, two_tower_checkpoint  # noqa: F401
