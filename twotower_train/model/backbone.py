"""Nemotron-H hybrid backbone on Megatron-Core: config → TransformerConfig → layer spec → model.

The model is Megatron-Core's own ``HybridModel`` (embedding, hybrid stack, final RMSNorm, untied
LM head, no positional embedding), built from one of two stack specs:

* ``te``    — Megatron-Core's ``hybrid_stack_spec`` (Transformer Engine; GPU hosts).
* ``local`` — the same layers without Transformer Engine (CPU, tests, GPUs without TE): plain
  column/row-parallel linears, Megatron's local ``DotProductAttention`` and ``SequentialMLP``
  experts, and :class:`~twotower_train.model.norm.RMSNorm`. Its state-dict keys map onto the TE
  spec's fused-norm names, so distributed checkpoints move freely between the two.

CPU: import :mod:`twotower_train.cpu_compat` first (the package ``__init__`` does) so Megatron's
CUDA-only call sites and the Mamba kernels have their CPU stand-ins.

What a config implies without building anything (parameter counts, the parallel layouts it
fits) is :mod:`twotower_train.model.sizes`; timing a forward + backward on this machine is
``benchmarks/backbone_smoke.py``.
"""

from __future__ import annotations

import dataclasses
from functools import partial

import torch
from megatron.core import parallel_state
from megatron.core.activations import squared_relu
from megatron.core.fusions.fused_bias_dropout import get_bias_dropout_add
from megatron.core.models.gpt.moe_module_specs import get_moe_module_spec
from megatron.core.models.hybrid.hybrid_block import HybridStack, HybridStackSubmodules
from megatron.core.models.hybrid.hybrid_model import HybridModel
from megatron.core.process_groups_config import ProcessGroupCollection
from megatron.core.ssm.mamba_layer import MambaLayer, MambaLayerSubmodules
from megatron.core.ssm.mamba_mixer import MambaMixer, MambaMixerSubmodules
from megatron.core.ssm.mlp_layer import MLPLayer
from megatron.core.tensor_parallel.layers import ColumnParallelLinear, RowParallelLinear
from megatron.core.transformer import TransformerConfig
from megatron.core.transformer.attention import SelfAttention, SelfAttentionSubmodules
from megatron.core.transformer.dot_product_attention import DotProductAttention
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.mlp import MLP, MLPSubmodules
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_layer import (
    MoETransformerLayer,
    TransformerLayer,
    TransformerLayerSubmodules,
)

from twotower_train import backends
from twotower_train.model.config import BackboneConfig, ParallelConfig, Recompute
from twotower_train.model.norm import RMSNorm
from twotower_train.model.sizes import check_parallel_layout


def transformer_config(
    cfg: BackboneConfig,
    parallel: ParallelConfig | None = None,
    *,
    params_dtype: torch.dtype = torch.float32,
    use_cpu_initialization: bool | None = None,
    recompute: Recompute = Recompute.NONE,
) -> TransformerConfig:
    """The Megatron ``TransformerConfig`` for a backbone config and parallel layout."""
    parallel = parallel or ParallelConfig()
    check_parallel_layout(cfg, parallel)
    if use_cpu_initialization is None:
        use_cpu_initialization = not torch.cuda.is_available()
    has_moe = "E" in cfg.pattern
    return TransformerConfig(
        num_layers=len(cfg.pattern),
        hidden_size=cfg.hidden_size,
        num_attention_heads=cfg.num_attention_heads,
        num_query_groups=cfg.num_query_groups,
        kv_channels=cfg.head_dim,
        ffn_hidden_size=cfg.ffn_hidden_size,
        normalization="RMSNorm",
        layernorm_epsilon=cfg.norm_eps,
        add_bias_linear=False,
        gated_linear_unit=False,
        activation_func=squared_relu,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        init_method_std=cfg.init_std,
        # Mamba-2
        mamba_num_heads=cfg.mamba_num_heads,
        mamba_head_dim=cfg.mamba_head_dim,
        mamba_state_dim=cfg.mamba_state_dim,
        mamba_num_groups=cfg.mamba_num_groups,
        # MoE (Nemotron-3 Nano: sigmoid router + expert-bias correction, normalised top-k probs
        # scaled by 2.5, one shared expert, squared-ReLU experts; no auxiliary loss).
        num_moe_experts=cfg.num_experts if has_moe else None,
        moe_router_topk=cfg.moe_top_k,
        moe_ffn_hidden_size=cfg.moe_ffn_hidden_size if has_moe else None,
        moe_shared_expert_intermediate_size=(
            cfg.moe_shared_expert_ffn_hidden_size if has_moe else None
        ),
        moe_router_score_function="sigmoid",
        moe_router_enable_expert_bias=has_moe,
        moe_router_bias_update_rate=cfg.moe_router_bias_update_rate,
        moe_router_topk_scaling_factor=cfg.moe_topk_scaling_factor,
        moe_router_dtype=cfg.moe_router_dtype,
        moe_router_load_balancing_type="none",
        moe_aux_loss_coeff=0.0,
        moe_token_dispatcher_type=cfg.moe_token_dispatcher,
        moe_grouped_gemm=backends.use_transformer_engine() and has_moe,
        # Parallelism
        tensor_model_parallel_size=parallel.tensor_parallel,
        sequence_parallel=parallel.sequence_parallel and parallel.tensor_parallel > 1,
        expert_model_parallel_size=parallel.expert_parallel,
        expert_tensor_parallel_size=parallel.expert_tensor_parallel,
        pipeline_model_parallel_size=parallel.pipeline_parallel,
        # Precision / init
        params_dtype=params_dtype,
        bf16=params_dtype == torch.bfloat16,
        use_cpu_initialization=use_cpu_initialization,
        # Fusions that need apex / TE / CUDA are switched on only where those exist.
        bias_dropout_fusion=False,
        masked_softmax_fusion=False,
        gradient_accumulation_fusion=False,
        persist_layer_norm=False,
        apply_rope_fusion=False,
        **_recompute_fields(recompute, has_moe),
    )


def _recompute_fields(recompute: Recompute, has_moe: bool) -> dict:
    """Megatron's recompute settings for ``training.recompute``: full = every layer its own
    checkpoint unit; selective = the attention core, the dense MLP and the MoE layer."""
    if recompute is Recompute.FULL:
        return dict(
            recompute_granularity="full", recompute_method="uniform", recompute_num_layers=1
        )
    if recompute is Recompute.SELECTIVE:
        return dict(
            recompute_granularity="selective",
            recompute_modules=["core_attn", "mlp", *(["moe"] if has_moe else [])],
        )
    return {}


class LocalHybridStack(HybridStack):
    """``HybridStack`` whose final norm is the local RMSNorm instead of ``TENorm``.

    Megatron's stack hard-wires ``TENorm`` for its final norm; everything else is unchanged.
    """

    def __init__(self, config: TransformerConfig, submodules, *args, post_layer_norm=True, **kw):
        super().__init__(config, submodules, *args, post_layer_norm=False, **kw)
        self.post_layer_norm = post_layer_norm
        if self.post_process and post_layer_norm:
            self.final_norm = RMSNorm(config, config.hidden_size, eps=config.layernorm_epsilon)


@dataclasses.dataclass(frozen=True)
class _UnfusedModules:
    """The module classes an unfused (separate-norm) hybrid stack is built from."""

    stack: type
    norm: type
    column_linear: type
    row_linear: type
    core_attention: type
    moe_layer: ModuleSpec


def _unfused_stack_spec(cfg: BackboneConfig, m: _UnfusedModules) -> ModuleSpec:
    """A hybrid stack whose input norms are separate modules. The key maps fold those norms
    onto Transformer Engine's fused ``layer_norm_weight`` names in distributed checkpoints."""
    mixer_params = {"d_conv": cfg.mamba_conv_kernel, "chunk_size": cfg.mamba_chunk_size}
    return ModuleSpec(
        module=m.stack,
        submodules=HybridStackSubmodules(
            mamba_layer=ModuleSpec(
                module=MambaLayer,
                submodules=MambaLayerSubmodules(
                    norm=m.norm,
                    mixer=ModuleSpec(
                        module=MambaMixer,
                        params=mixer_params,
                        submodules=MambaMixerSubmodules(
                            in_proj=m.column_linear, out_proj=m.row_linear
                        ),
                    ),
                    mamba_bda=get_bias_dropout_add,
                    sharded_state_dict_keys_map={"norm.": "mixer.in_proj.layer_norm_"},
                ),
            ),
            attention_layer=ModuleSpec(
                module=TransformerLayer,
                submodules=TransformerLayerSubmodules(
                    input_layernorm=m.norm,
                    self_attention=ModuleSpec(
                        module=SelfAttention,
                        params={"attn_mask_type": AttnMaskType.causal},
                        submodules=SelfAttentionSubmodules(
                            linear_qkv=m.column_linear,
                            core_attention=m.core_attention,
                            linear_proj=m.row_linear,
                        ),
                    ),
                    self_attn_bda=get_bias_dropout_add,
                    sharded_state_dict_keys_map={
                        "input_layernorm.": "self_attention.linear_qkv.layer_norm_"
                    },
                ),
            ),
            mlp_layer=ModuleSpec(
                module=MLPLayer,
                submodules=TransformerLayerSubmodules(
                    pre_mlp_layernorm=m.norm,
                    mlp=partial(
                        MLP.as_mlp_submodule,
                        submodules=MLPSubmodules(
                            linear_fc1=m.column_linear, linear_fc2=m.row_linear
                        ),
                    ),
                    mlp_bda=get_bias_dropout_add,
                    sharded_state_dict_keys_map={
                        "pre_mlp_layernorm.": "mlp.linear_fc1.layer_norm_"
                    },
                ),
            ),
            moe_layer=m.moe_layer,
        ),
    )


def local_stack_spec(cfg: BackboneConfig) -> ModuleSpec:
    """Hybrid stack spec with no Transformer Engine (runs on CPU): plain column/row-parallel
    linears, Megatron's local attention and ``SequentialMLP`` experts, our RMSNorm."""
    moe_layer = ModuleSpec(
        module=MoETransformerLayer,
        submodules=TransformerLayerSubmodules(
            pre_mlp_layernorm=RMSNorm,
            mlp=get_moe_module_spec(
                use_te=False, num_experts=cfg.num_experts, moe_grouped_gemm=False
            ),
            mlp_bda=get_bias_dropout_add,
        ),
    )
    return _unfused_stack_spec(
        cfg,
        _UnfusedModules(
            stack=LocalHybridStack,
            norm=RMSNorm,
            column_linear=ColumnParallelLinear,
            row_linear=RowParallelLinear,
            core_attention=DotProductAttention,
            moe_layer=moe_layer,
        ),
    )


def te_stack_spec(cfg: BackboneConfig) -> ModuleSpec:
    """Megatron-Core's Transformer Engine hybrid spec with our Mamba conv/chunk settings."""
    from megatron.core.models.hybrid.hybrid_layer_specs import hybrid_stack_spec

    mixer_params = {"d_conv": cfg.mamba_conv_kernel, "chunk_size": cfg.mamba_chunk_size}
    mamba_layer = hybrid_stack_spec.submodules.mamba_layer
    mixer = dataclasses.replace(mamba_layer.submodules.mixer, params=mixer_params)
    # A fresh spec tree: Megatron's module-level spec object is never mutated.
    return dataclasses.replace(
        hybrid_stack_spec,
        submodules=dataclasses.replace(
            hybrid_stack_spec.submodules,
            mamba_layer=dataclasses.replace(
                mamba_layer,
                submodules=dataclasses.replace(mamba_layer.submodules, mixer=mixer),
            ),
            mtp_block_spec=None,
        ),
    )


def te_unfused_stack_spec(cfg: BackboneConfig) -> ModuleSpec:
    """Transformer Engine layers with the input norms as separate modules (``TENorm``): the
    same parameters and distributed-checkpoint keys as :func:`te_stack_spec`."""
    from megatron.core.extensions.transformer_engine import (
        TEColumnParallelLinear,
        TEDotProductAttention,
        TENorm,
        TERowParallelLinear,
    )

    return _unfused_stack_spec(
        cfg,
        _UnfusedModules(
            stack=HybridStack,
            norm=TENorm,
            column_linear=TEColumnParallelLinear,
            row_linear=TERowParallelLinear,
            core_attention=TEDotProductAttention,
            moe_layer=te_stack_spec(cfg).submodules.moe_layer,
        ),
    )


def stack_spec(cfg: BackboneConfig, *, use_te: bool | None = None) -> ModuleSpec:
    """The backbone's spec: Megatron's fused TE spec on GPU hosts, the local spec otherwise."""
    use_te = backends.use_transformer_engine() if use_te is None else use_te
    return te_stack_spec(cfg) if use_te else local_stack_spec(cfg)


def denoiser_stack_spec(cfg: BackboneConfig, *, use_te: bool | None = None) -> ModuleSpec:
    """The two-tower spec: every layer's input norm is its own module, because adaLN modulates
    the norm's input (Mamba, attention) or output (MoE, MLP). Both towers use it so their state
    dicts share keys; its checkpoint keys equal the backbone spec's, so stage-1 checkpoints load
    as is."""
    use_te = backends.use_transformer_engine() if use_te is None else use_te
    return te_unfused_stack_spec(cfg) if use_te else local_stack_spec(cfg)


def build_backbone(
    cfg: BackboneConfig,
    config: TransformerConfig | None = None,
    *,
    use_te: bool | None = None,
    spec: ModuleSpec | None = None,
    pg_collection: ProcessGroupCollection | None = None,
) -> HybridModel:
    """Build the backbone (``spec`` defaults to :func:`stack_spec`). Model-parallel groups must
    be initialised (:func:`twotower_train.distributed.initialize`)."""
    config = config or transformer_config(cfg)
    if pg_collection is None:
        pg_collection = ProcessGroupCollection.use_mpu_process_groups()
    return HybridModel(
        config=config,
        hybrid_stack_spec=spec or stack_spec(cfg, use_te=use_te),
        vocab_size=cfg.vocab_size,
        max_sequence_length=cfg.max_sequence_length,
        hybrid_layer_pattern=cfg.pattern,
        pre_process=parallel_state.is_pipeline_first_stage(),
        post_process=parallel_state.is_pipeline_last_stage(),
        share_embeddings_and_output_weights=False,
        position_embedding_type="none",
        pg_collection=pg_collection,
    )


def forward_logits(model: HybridModel, tokens: torch.Tensor) -> torch.Tensor:
    """Causal LM logits (b, s, vocab/TP) of a backbone for token ids (b, s)."""
    return model(input_ids=tokens, position_ids=None, attention_mask=None)
