"""Backbone configuration: the Nemotron-H hybrid stack as a typed dataclass, plus presets.

The pattern string is the architecture (one character per layer, docs/backbone.md):
``M`` Mamba-2, ``*`` self-attention, ``E`` MoE, ``-`` dense MLP. Everything else here sizes
those layers. :func:`BackboneConfig.validate` checks the config on its own; checks that need
the parallel layout (heads divisible by TP, experts by EP) live in
:func:`twotower_train.model.sizes.check_parallel_layout`.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass

from twotower_train.errors import ConfigError

LAYER_SYMBOLS = {"M": "mamba", "*": "attention", "E": "moe", "-": "mlp"}
MOE_ROUTER_DTYPES = ("fp32", "fp64")
"""``model.moe_router_dtype``: the values of Megatron-Core's ``TransformerConfig.moe_router_dtype``
this backbone offers (Megatron's third, None, routes in the activation dtype: bf16 on GPUs)."""
DENOISER_SCAN_DTYPES = ("fp32", "activation")
"""``model.denoiser_scan_dtype``: the denoiser's seeded SSD scan in fp32, or in the activation
dtype (bf16 under bf16 training; the same as fp32 when the activations are fp32)."""


@dataclass
class BackboneConfig:
    """Nemotron-H / Nemotron-3-Nano style hybrid backbone."""

    pattern: str = "M*E-"
    """Layer types, one char per layer: M Mamba-2, * attention, E MoE, - MLP."""
    num_layers: int | None = None
    """Optional cross-check of len(pattern); a mismatch is an error, not a silent override."""
    hidden_size: int = 64
    vocab_size: int = 4096
    max_sequence_length: int = 4096
    # Attention (GQA, no positional embedding: Nemotron-H uses none).
    num_attention_heads: int = 4
    num_query_groups: int = 2
    head_dim: int = 16
    # Mamba-2.
    mamba_num_heads: int = 8
    mamba_head_dim: int = 16
    mamba_state_dim: int = 16
    mamba_num_groups: int = 2
    mamba_conv_kernel: int = 4
    mamba_chunk_size: int = 16
    # MoE: sigmoid router with expert-bias correction, top-k scaling, shared expert, squared ReLU.
    num_experts: int = 4
    moe_top_k: int = 2
    moe_ffn_hidden_size: int = 64
    moe_shared_expert_ffn_hidden_size: int = 64
    moe_topk_scaling_factor: float = 2.5
    moe_router_bias_update_rate: float = 1e-3
    moe_token_dispatcher: str = "allgather"
    moe_router_dtype: str = "fp32"
    """Megatron's ``moe_router_dtype``: router logits, top-k scores and the weighted sum of the
    experts' outputs in fp32 or fp64 (the released model: fp64)."""
    # Dense MLP layers ('-').
    ffn_hidden_size: int = 128
    norm_eps: float = 1e-5
    init_std: float = 0.02
    # Special token ids (released model conventions).
    pad_token_id: int = 0
    bos_token_id: int = 1
    eos_token_id: int = 2
    mask_token_id: int = 3
    # Two-tower reading of the denoiser's outputs (ignored by the single-tower AR model).
    denoiser_shift: bool = False
    """False (the released model): the denoiser's output at a position scores the token there.
    True: the output at position i scores the token at i + 1 — the backbone's own next-token
    reading, so the denoiser starts as a working AR model (docs/diffusion.md §"Shifted
    prediction") — and a block's first position is scored by the context tower's output at
    the position before the block."""

    denoiser_scan_dtype: str = "activation"
    """The denoiser's seeded Mamba scan (the one that starts from the context tower's states):
    ``fp32`` casts its inputs to fp32 and keeps its output in fp32 up to the gated norm (the
    released model: its bf16 scan overflowed with long contexts); ``activation`` scans in the
    activation dtype. Equal when the activations are fp32 (CPU training); only the denoiser's
    scan (training and sampling) is affected, not the context tower's (docs/gpu_kernels.md)."""

    def __post_init__(self) -> None:
        self.validate()

    @property
    def layer_types(self) -> list[str]:
        return [LAYER_SYMBOLS[c] for c in self.pattern]

    def validate(self) -> None:
        bad = sorted({c for c in self.pattern if c not in LAYER_SYMBOLS})
        if bad:
            raise ConfigError(
                f"model.pattern={self.pattern!r} has unknown layer character(s) {bad}; "
                f"use only {sorted(LAYER_SYMBOLS)} (M Mamba-2, * attention, E MoE, - MLP)"
            )
        if not self.pattern:
            raise ConfigError("model.pattern is empty; give one character per layer, e.g. 'M*E-'")
        if self.num_layers is not None and self.num_layers != len(self.pattern):
            raise ConfigError(
                f"model.num_layers={self.num_layers} but model.pattern has {len(self.pattern)} "
                "layers; fix one of them (or drop model.num_layers)"
            )
        if self.num_attention_heads % self.num_query_groups:
            raise ConfigError(
                f"model.num_attention_heads={self.num_attention_heads} is not divisible by "
                f"model.num_query_groups={self.num_query_groups}"
            )
        if self.mamba_num_heads % self.mamba_num_groups:
            raise ConfigError(
                f"model.mamba_num_heads={self.mamba_num_heads} is not divisible by "
                f"model.mamba_num_groups={self.mamba_num_groups}"
            )
        if "E" in self.pattern and not 0 < self.moe_top_k <= self.num_experts:
            raise ConfigError(
                f"model.moe_top_k={self.moe_top_k} must be in [1, model.num_experts="
                f"{self.num_experts}]"
            )
        for name, allowed in (
            ("moe_router_dtype", MOE_ROUTER_DTYPES),
            ("denoiser_scan_dtype", DENOISER_SCAN_DTYPES),
        ):
            if getattr(self, name) not in allowed:
                raise ConfigError(
                    f"model.{name}={getattr(self, name)!r} is not one of {list(allowed)}; "
                    f"set model.{name}={allowed[0]}"
                )
        for name in ("pad_token_id", "bos_token_id", "eos_token_id", "mask_token_id"):
            if not 0 <= getattr(self, name) < self.vocab_size:
                raise ConfigError(
                    f"model.{name}={getattr(self, name)} is outside the vocabulary "
                    f"[0, model.vocab_size={self.vocab_size})"
                )

    def replace(self, **changes) -> BackboneConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> BackboneConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown model key(s) {unknown}; valid keys: {sorted(known)}")
        return cls(**values)


NANO_30B_A3B_PATTERN = "MEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEMEM*EMEMEMEME"

# Exact public Nemotron-3-Nano-30B-A3B dimensions (docs/backbone.md). Build on the meta device
# only unless you have the GPUs for it.
_NANO_30B_A3B = BackboneConfig(
    pattern=NANO_30B_A3B_PATTERN,
    num_layers=52,
    hidden_size=2688,
    vocab_size=131072,
    max_sequence_length=262144,
    num_attention_heads=32,
    num_query_groups=2,
    head_dim=128,
    mamba_num_heads=64,
    mamba_head_dim=64,
    mamba_state_dim=128,
    mamba_num_groups=8,
    mamba_conv_kernel=4,
    mamba_chunk_size=128,
    num_experts=128,
    moe_top_k=6,
    moe_ffn_hidden_size=1856,
    moe_shared_expert_ffn_hidden_size=3712,
    moe_topk_scaling_factor=2.5,
    moe_token_dispatcher="alltoall",
    ffn_hidden_size=1856,
    init_std=0.02,
    # The released model's numerics (docs/gpu_kernels.md): fp64 router, fp32 denoiser scan.
    moe_router_dtype="fp64",
    denoiser_scan_dtype="fp32",
)

PRESETS: dict[str, BackboneConfig] = {
    # Tests and the CPU demo: all four layer types, several experts, GQA; seconds on a CPU.
    "tiny": BackboneConfig(),
    # The CPU demo's model: still every layer type, wider and twice as deep as tiny (~7k tok/s
    # training on 2 cores), so a few minutes of training give recognisable text.
    "small": BackboneConfig(
        pattern="M*EM*E-",
        hidden_size=128,
        num_attention_heads=8,
        num_query_groups=2,
        head_dim=16,
        mamba_num_heads=16,
        moe_ffn_hidden_size=128,
        moe_shared_expert_ffn_hidden_size=128,
        ffn_hidden_size=256,
    ),
    "nano_30b_a3b": _NANO_30B_A3B,
    # Nano widths, few layers and experts: one layer of each mixer twice, fits one 80 GB GPU for
    # kernel/throughput benchmarks in bf16 (two towers + optimizer state).
    "nano_proxy": dataclasses.replace(
        _NANO_30B_A3B,
        pattern="MEM*EMEM*E",
        num_layers=None,
        max_sequence_length=8192,
        num_experts=8,
        moe_token_dispatcher=BackboneConfig.moe_token_dispatcher,
    ),
}


def preset(name: str, **overrides) -> BackboneConfig:
    """A named preset, optionally with field overrides.

    Presets are named like their recipe files (``recipes/model/nano_30b_a3b.yaml`` holds preset
    ``nano_30b_a3b``); the dashed spelling (``nano-30b-a3b``) is accepted too."""
    key = name.replace("-", "_")
    if key not in PRESETS:
        raise ConfigError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[key].replace(**overrides)


class Recompute(enum.Enum):
    """Activation recompute of the trained layers (``training.recompute``; docs/memory.md).

    Set on Megatron's ``TransformerConfig`` (``recompute_granularity`` / ``recompute_modules``),
    so the stage-1 backbone gets Megatron's own recompute and the denoiser, which walks its
    layers itself, reads the same fields.
    """

    NONE = "none"  # keep every activation
    SELECTIVE = "selective"  # recompute attention cores and MLP / MoE sub-layers
    FULL = "full"  # keep only each layer's input, recompute the layer in backward


@dataclass
class ParallelConfig:
    """Model-parallel layout (data parallel is whatever is left of the world size)."""

    tensor_parallel: int = 1
    sequence_parallel: bool = False
    expert_parallel: int = 1
    expert_tensor_parallel: int = 1
    """Tensor-parallel split of each expert's weights. 1 (whole experts, as Megatron-Bridge's
    Nemotron-3-Nano recipe) makes an expert group ``expert_parallel`` ranks wide whatever
    ``tensor_parallel`` is; Megatron's own default (= tensor_parallel) would need
    ``tensor_parallel × expert_parallel`` ranks per group."""
    pipeline_parallel: int = 1
