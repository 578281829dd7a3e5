"""Shared fixtures: a single-process gloo group and the tiny backbone config."""

from __future__ import annotations

import os

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")  # megatron's jit_fuser would compile (~9 s)
os.environ.setdefault("WANDB_MODE", "offline")

import pytest  # noqa: E402
import torch  # noqa: E402

import twotower_train  # noqa: E402,F401  (applies cpu_compat)
from twotower_train import distributed  # noqa: E402
from twotower_train.model.config import preset  # noqa: E402


@pytest.fixture
def single_process():
    """Megatron model-parallel state for one rank (TP=EP=PP=1), freshly seeded."""
    distributed.initialize(seed=1234)
    yield
    # Groups are re-created by the next initialize(); the process group itself is kept.


@pytest.fixture
def tiny_cfg():
    return preset("tiny")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def tool_env():
    """Environment for a CLI subprocess: without this process's single-rank rendezvous (the
    child would try to bind the same port) and with one intra-op thread."""
    rendezvous = {"MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK"}
    env = {k: v for k, v in os.environ.items() if k not in rendezvous}
    return {**env, "OMP_NUM_THREADS": "1"}
