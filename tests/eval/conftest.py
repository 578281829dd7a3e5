"""Eval tests reuse the training fixtures (tiny data, a tiny stage-2 checkpoint)."""

from tests.training.fixtures import data_root, two_tower_checkpoint  # noqa: F401
