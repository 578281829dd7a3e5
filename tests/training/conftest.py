"""Fixtures of the training tests live in :mod:`tests.training.fixtures` (also imported by the
distributed training tests)."""

from tests.training.fixtures import backbone_checkpoint, data_root, recipe  # noqa: F401
