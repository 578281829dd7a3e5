"""What a backbone config implies, from the config alone (no Megatron, nothing built): its
parameter counts and whether a tensor / expert-parallel layout divides its shapes."""

from __future__ import annotations

from twotower_train.errors import ConfigError
from twotower_train.model.config import BackboneConfig, ParallelConfig


def check_parallel_layout(cfg: BackboneConfig, parallel: ParallelConfig) -> None:
    """Shapes that a tensor/expert-parallel split must divide, each with one clear message."""
    tp = (parallel.tensor_parallel, "parallelism.tensor_parallel")
    checks = []
    if "*" in cfg.pattern:
        checks += [
            ("model.num_attention_heads", cfg.num_attention_heads, tp),
            ("model.num_query_groups", cfg.num_query_groups, tp),
        ]
    if "M" in cfg.pattern:
        checks += [
            ("model.mamba_num_heads", cfg.mamba_num_heads, tp),
            ("model.mamba_num_groups", cfg.mamba_num_groups, tp),
        ]
    if "E" in cfg.pattern:
        checks += [
            (
                "model.num_experts",
                cfg.num_experts,
                (parallel.expert_parallel, "parallelism.expert_parallel"),
            ),
            (
                "model.moe_ffn_hidden_size",
                cfg.moe_ffn_hidden_size,
                (parallel.expert_tensor_parallel, "parallelism.expert_tensor_parallel"),
            ),
        ]
    checks.append(("model.vocab_size", cfg.vocab_size, tp))
    for key, value, (degree, knob) in checks:
        if value % degree:
            raise ConfigError(
                f"{key}={value} is not divisible by {knob}={degree}; choose a {knob} that "
                f"divides {value}"
            )


def count_parameters(cfg: BackboneConfig) -> tuple[int, int]:
    """(total, active-per-token) parameter counts of the backbone, from the config alone.

    Active counts the top-k routed experts plus the shared expert in MoE layers and leaves out
    the input embedding table (a row lookup, not compute; the usual convention for the "A3B"
    figure); everything else is used by every token. Computed analytically so it is cheap even
    for the 30B config; the tests check it against a meta-device build.
    """
    h = cfg.hidden_size
    embed = 2 * cfg.vocab_size * h + h  # embedding + untied head + final norm
    d_inner = cfg.mamba_num_heads * cfg.mamba_head_dim
    bc = 2 * cfg.mamba_num_groups * cfg.mamba_state_dim
    mamba = (
        h  # pre-norm
        + h * (2 * d_inner + bc + cfg.mamba_num_heads)  # in_proj: z, x, B, C, dt
        + (d_inner + bc) * (cfg.mamba_conv_kernel + 1)  # depthwise conv weight + bias
        + 3 * cfg.mamba_num_heads  # dt_bias, A_log, D
        + d_inner  # gated norm
        + d_inner * h  # out_proj
    )
    q = cfg.num_attention_heads * cfg.head_dim
    kv = 2 * cfg.num_query_groups * cfg.head_dim
    attention = h + h * (q + kv) + q * h
    mlp = h + 2 * h * cfg.ffn_hidden_size
    expert = 2 * h * cfg.moe_ffn_hidden_size
    shared = 2 * h * cfg.moe_shared_expert_ffn_hidden_size
    router = cfg.num_experts * h
    moe_total = h + router + cfg.num_experts * expert + shared
    moe_active = h + router + cfg.moe_top_k * expert + shared
    per_type_total = {"M": mamba, "*": attention, "-": mlp, "E": moe_total}
    per_type_active = {**per_type_total, "E": moe_active}
    total = embed + sum(per_type_total[c] for c in cfg.pattern)
    active = embed - cfg.vocab_size * h + sum(per_type_active[c] for c in cfg.pattern)
    return total, active
