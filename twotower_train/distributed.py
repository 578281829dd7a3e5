"""Process-group and RNG set-up on top of Megatron-Core's ``parallel_state``, and the one
device rule.

One call for every entry point (trainer, tests, converters, samplers)::

    from twotower_train import distributed
    distributed.initialize(tensor_parallel=2, expert_parallel=1, seed=1234)

Works under ``torchrun`` (reads RANK / WORLD_SIZE / MASTER_ADDR from the environment) and in a
plain single process (creates a 1-rank group on a free local port). Backend: NCCL with CUDA,
gloo otherwise.

The device rule: :func:`device` names the process's device (its local GPU, else the CPU). The
model (:func:`to_device` after building it — Megatron leaves some parameters on the CPU and
expects its caller to move the model, as Megatron-LM's ``get_model`` does), every batch, the
trainer's corruption generator and every tensor that enters a collective live there. NCCL takes
only CUDA tensors, so a CPU tensor in a collective fails on a GPU host although CPU runs pass;
``tests/training/test_device_rule.py`` keeps CPU CI guarding the rule.
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
from collections.abc import Iterator

import torch
import torch.distributed as dist
from megatron.core import parallel_state, tensor_parallel

from twotower_train import backends
from twotower_train.errors import ConfigError


def free_port() -> int:
    """A free TCP port on localhost (single-process groups, test launchers)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def device() -> torch.device:
    """The one device of this process: its local CUDA device with CUDA, else the CPU.

    Models, batches, generators and every tensor that enters a collective live here."""
    if backends.cuda_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def to_device(module: torch.nn.Module, target: torch.device | str | None = None) -> torch.nn.Module:
    """Move a built model (parameters and buffers) to ``target`` (default :func:`device`)."""
    return module.to(device() if target is None else torch.device(target))


@contextlib.contextmanager
def on_device(target: torch.device | str) -> Iterator[None]:
    """Make ``target`` the current CUDA device inside the block (Megatron allocates its
    workspaces on ``torch.cuda.current_device()``); nothing to do for other devices."""
    target = torch.device(target)
    if target.type != "cuda":
        yield
        return
    with torch.cuda.device(target):
        yield


def ranks_per_replica(
    *,
    tensor_parallel: int = 1,
    expert_parallel: int = 1,
    expert_tensor_parallel: int = 1,
    pipeline_parallel: int = 1,
) -> int:
    """The smallest world size a layout fits: a multiple of the dense model-parallel size (TP ×
    PP) and of the expert one (expert-TP × EP × PP); the rest of the world is data parallel."""
    return math.lcm(
        tensor_parallel * pipeline_parallel,
        expert_tensor_parallel * expert_parallel * pipeline_parallel,
    )


def initialize(
    *,
    tensor_parallel: int = 1,
    expert_parallel: int = 1,
    expert_tensor_parallel: int = 1,
    pipeline_parallel: int = 1,
    seed: int = 1234,
) -> None:
    """Initialise torch.distributed, Megatron's model-parallel groups and its RNG tracker.

    ``expert_tensor_parallel`` splits each expert's weights (1 = whole experts, Megatron-Bridge's
    Nemotron-3-Nano setting), so an expert group spans ``expert_tensor_parallel ×
    expert_parallel`` ranks, independently of ``tensor_parallel``.

    Re-initialising with a different layout in the same process destroys the old groups first
    (tests build several layouts in one process).
    """
    if not dist.is_initialized():
        if "RANK" not in os.environ:
            os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
            os.environ.setdefault("MASTER_PORT", str(free_port()))
            os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
        if backends.cuda_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group(backend="nccl" if backends.cuda_available() else "gloo")
    world = dist.get_world_size()
    replica = ranks_per_replica(
        tensor_parallel=tensor_parallel,
        expert_parallel=expert_parallel,
        expert_tensor_parallel=expert_tensor_parallel,
        pipeline_parallel=pipeline_parallel,
    )
    if world % replica:
        raise ConfigError(
            f"world size {world} does not fit parallelism.tensor_parallel={tensor_parallel} x "
            f"pipeline_parallel={pipeline_parallel} and parallelism.expert_tensor_parallel="
            f"{expert_tensor_parallel} x expert_parallel={expert_parallel}: use a multiple of "
            f"{replica} processes, or change the parallel sizes"
        )
    if parallel_state.model_parallel_is_initialized():
        _destroy_model_parallel_groups()
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=tensor_parallel,
        pipeline_model_parallel_size=pipeline_parallel,
        expert_model_parallel_size=expert_parallel,
        expert_tensor_parallel_size=expert_tensor_parallel,
    )
    set_seed(seed)


def set_seed(seed: int) -> None:
    """Seed Python/torch and Megatron's model-parallel RNG tracker (same on every rank, with
    Megatron's per-TP-rank offsets for the tensor-parallel stream)."""
    import random

    random.seed(seed)
    torch.manual_seed(seed)
    tensor_parallel.model_parallel_cuda_manual_seed(seed)


def _destroy_model_parallel_groups() -> None:
    """Megatron's ``destroy_model_parallel`` forgets its groups but destroys only the extra gloo
    ones; the rest stay alive (on the CPU each gloo group keeps two polling threads), so a
    process that re-initialises many layouts (the test suite) piles up thousands of threads.
    Destroy every group but the default one."""
    parallel_state.destroy_model_parallel()
    world = dist.group.WORLD
    for group in list(dist.distributed_c10d._world.pg_map):  # torch keeps no public list
        if group is not world:
            dist.destroy_process_group(group)


def shutdown() -> None:
    if parallel_state.model_parallel_is_initialized():
        _destroy_model_parallel_groups()
    if dist.is_initialized():
        dist.destroy_process_group()
