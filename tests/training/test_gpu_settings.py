"""CPU checks of the GPU-path settings: the device helper, the DDP and optimizer configs derived
from one recipe key, the recipe errors for contradicting settings, expert tensor parallelism."""

from __future__ import annotations

import pytest
import torch

from twotower_train import distributed
from twotower_train.errors import ConfigError
from twotower_train.model.backbone import transformer_config
from twotower_train.model.config import ParallelConfig
from twotower_train.model.sizes import check_parallel_layout
from twotower_train.training.config import OptimizerConfig, Precision
from twotower_train.training.optimizer import megatron_configs
from twotower_train.training.recipes import load_config


def test_device_is_the_cpu_without_cuda(single_process):
    assert distributed.device() == torch.device("cpu")
    module = torch.nn.Linear(2, 2)
    assert distributed.to_device(module, "meta").weight.device == torch.device("meta")
    with distributed.on_device("cpu"):  # nothing to select on a CPU
        assert torch.zeros(1).device == torch.device("cpu")


@pytest.mark.parametrize("sharded", [True, False])
@pytest.mark.parametrize("megatron", [True, False])
def test_ddp_and_optimizer_configs_come_from_one_key(sharded, megatron):
    cfg = OptimizerConfig(
        precision=Precision.BF16,
        use_distributed_optimizer=sharded,
        overlap_grad_reduce=True,
        overlap_param_gather=sharded,
        clip_grad=0.5,
    )
    ddp, opt = megatron_configs(cfg, megatron_optimizer=megatron, peak_lr=1e-4, min_lr=1e-6)
    # Megatron asserts these agree; torch AdamW (megatron=False) needs all-reduced grads.
    assert ddp.use_distributed_optimizer == opt.use_distributed_optimizer == (sharded and megatron)
    assert ddp.overlap_param_gather == opt.overlap_param_gather == (sharded and megatron)
    assert ddp.overlap_grad_reduce and ddp.grad_reduce_in_fp32
    assert opt.bf16 and opt.params_dtype == torch.bfloat16 and opt.clip_grad == 0.5
    assert (opt.lr, opt.min_lr) == (1e-4, 1e-6)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["optimizer.use_distributed_optimizer=false", "optimizer.overlap_param_gather=true"],
            "optimizer.overlap_param_gather=true needs optimizer.use_distributed_optimizer=true",
        ),
        (
            ["training.grad_sync=allreduce", "optimizer.use_distributed_optimizer=true"],
            "training.grad_sync=allreduce .* cannot use optimizer.use_distributed_optimizer=true",
        ),
        (
            ["training.grad_sync=allreduce", "optimizer.overlap_grad_reduce=true"],
            "cannot use optimizer.overlap_grad_reduce=true",
        ),
        (["parallelism.expert_tensor_parallel=0"], "parallelism.expert_tensor_parallel"),
        (
            ["model=tiny", "parallelism.expert_tensor_parallel=3"],
            "model.moe_ffn_hidden_size=64 is not divisible by parallelism.expert_tensor_parallel=3",
        ),
    ],
)
def test_contradicting_settings_fail_recipe_validation(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config("demo", overrides, check_data=False)


def test_expert_tensor_parallel_reaches_megatron(tiny_cfg):
    config = transformer_config(tiny_cfg, ParallelConfig(expert_tensor_parallel=1))
    assert config.expert_tensor_parallel_size == 1
    check_parallel_layout(tiny_cfg, ParallelConfig(tensor_parallel=2, expert_tensor_parallel=2))


@pytest.mark.parametrize("recipe, gpus", [("single", 1), ("tp2", 2), ("ep2", 2), ("nano_ep8", 8)])
def test_gpus_per_replica_of_each_parallelism_recipe(recipe, gpus):
    """The counts docs/training.md states; nano_ep8 (TP 2 × EP 8, whole experts) is one node."""
    par = load_config("nano_30b_a3b", [f"parallelism={recipe}"], check_data=False).parallelism
    assert (
        distributed.ranks_per_replica(
            tensor_parallel=par.tensor_parallel,
            expert_parallel=par.expert_parallel,
            expert_tensor_parallel=par.expert_tensor_parallel,
            pipeline_parallel=par.pipeline_parallel,
        )
        == gpus
    )
    if recipe == "nano_ep8":
        # Megatron's default expert-TP (= TP) would need TP × EP ranks per expert group.
        assert (
            distributed.ranks_per_replica(
                tensor_parallel=2, expert_parallel=8, expert_tensor_parallel=2
            )
            == 16
        )


def test_world_size_that_does_not_fit_is_one_clear_error(single_process):
    with pytest.raises(ConfigError, match="use a multiple of 2 processes"):
        distributed.initialize(expert_parallel=2)
    distributed.initialize(seed=1234)
