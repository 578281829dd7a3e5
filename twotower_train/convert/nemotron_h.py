"""Hugging Face ``nemotron_h`` ↔ Megatron backbone: configs, TP=1 state dicts and HF folders.

Everything here is a pure function of its inputs, driven by the name table in
:mod:`twotower_train.convert.hf_names`; tensor-parallel resharding is left to Megatron's
``dist_checkpointing``. Import a released folder (CPU, runs as written with any folder)::

    from twotower_train import distributed
    from twotower_train.convert.nemotron_h import load_hf_folder, load_megatron_state
    from twotower_train.model.backbone import build_backbone

    cfg, state = load_hf_folder("path/to/nemotron_h_folder")
    distributed.initialize(seed=0)
    model = distributed.to_device(build_backbone(cfg))  # this process's GPU, or the CPU
    load_megatron_state(model, state)

Semantics that a config cannot carry are checked here and fail with the HF key to change:
Megatron normalises the top-k sigmoid scores exactly when top-k > 1 (HF: ``norm_topk_prob``),
has no expert-group routing (``n_group``), no latent MoE projection, untied embeddings,
biasless linears, and a gated Mamba norm whose eps is fixed at 1e-5; a multi-token-prediction
head (``mtp.*``) is dropped with a warning. HF clamps
``dt ≥ time_step_min`` in its Mamba mixer; Megatron's training forward does not clamp, so
:func:`hf_config_from_backbone` writes ``time_step_min=0`` (docs/hf_interop.md).
"""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path

import torch
from transformers import GenerationConfig, NemotronHConfig

from twotower_train import backends
from twotower_train.convert.hf_files import (
    DEFAULT_SHARD_BYTES,
    ConversionError,
    atomic_folder,
    listing,
    read_tensors,
    save_config,
    tensor_files,
    write_shards,
)
from twotower_train.convert.hf_names import (
    HF_LAYER_TYPES,
    TRANSFORMS,
    checkpoint_layout,
    checkpoint_names,
    resolve,
)
from twotower_train.model.config import BackboneConfig

__all__ = [
    "ConversionError",
    "backbone_config_from_hf",
    "hf_config_from_backbone",
    "hf_config_values",
    "hf_to_megatron_state",
    "load_hf_folder",
    "load_megatron_state",
    "megatron_to_hf_state",
    "read_hf_config",
    "save_hf_folder",
]

# (BackboneConfig field, NemotronHConfig field): copied as they are in both directions.
CONFIG_FIELDS: tuple[tuple[str, str], ...] = (
    ("hidden_size", "hidden_size"),
    ("vocab_size", "vocab_size"),
    ("max_sequence_length", "max_position_embeddings"),
    ("num_attention_heads", "num_attention_heads"),
    ("num_query_groups", "num_key_value_heads"),
    ("head_dim", "head_dim"),
    ("mamba_num_heads", "mamba_num_heads"),
    ("mamba_head_dim", "mamba_head_dim"),
    ("mamba_state_dim", "ssm_state_size"),
    ("mamba_num_groups", "n_groups"),
    ("mamba_conv_kernel", "conv_kernel"),
    ("mamba_chunk_size", "chunk_size"),
    ("num_experts", "n_routed_experts"),
    ("moe_top_k", "num_experts_per_tok"),
    ("moe_ffn_hidden_size", "moe_intermediate_size"),
    ("moe_shared_expert_ffn_hidden_size", "moe_shared_expert_intermediate_size"),
    ("moe_topk_scaling_factor", "routed_scaling_factor"),
    ("ffn_hidden_size", "intermediate_size"),
    ("norm_eps", "layer_norm_epsilon"),
    ("init_std", "initializer_range"),
    ("pad_token_id", "pad_token_id"),
    ("bos_token_id", "bos_token_id"),
    ("mask_token_id", "mask_token_id"),
)

# HF settings Megatron's backbone has no knob for: the value it implements, per HF key.
REQUIRED_HF_VALUES: dict[str, object] = {
    "mlp_hidden_act": "relu2",
    "mamba_hidden_act": "silu",
    "use_bias": False,
    "mlp_bias": False,
    "attention_bias": False,
    "mamba_proj_bias": False,
    "use_conv_bias": True,
    "tie_word_embeddings": False,
    "n_group": 1,
    "topk_group": 1,
    "moe_latent_size": None,
    "sliding_window": None,
}
MEGATRON_GATED_NORM_EPS = 1e-5  # MambaMixer builds its gated RMSNorm with eps=1e-5, always.
MTP_PREFIX = "mtp."
"""Multi-token-prediction head tensors of released checkpoints; the backbone has no MTP head, so
import skips them (with a warning naming them)."""


# ---- configs ------------------------------------------------------------------------------------


def backbone_config_from_hf(hf_config: NemotronHConfig | dict, **overrides) -> BackboneConfig:
    """The backbone config of an HF ``nemotron_h`` config (or of a config class derived from it,
    such as the two-tower export's). ``overrides`` set fields HF does not carry
    (``moe_router_bias_update_rate``, ``moe_token_dispatcher``) or replace any other."""
    if isinstance(hf_config, dict):
        if hf_config.get("model_type", "nemotron_h") != "nemotron_h":
            raise ConversionError(
                f"config model_type={hf_config['model_type']!r}; expected 'nemotron_h'"
            )
        hf_config = NemotronHConfig.from_dict(hf_config)
    if not isinstance(hf_config, NemotronHConfig):
        raise ConversionError(f"config model_type={hf_config.model_type!r}; expected 'nemotron_h'")
    for key, value in REQUIRED_HF_VALUES.items():
        if getattr(hf_config, key, value) != value:
            raise ConversionError(
                f"HF config {key}={getattr(hf_config, key)!r} is not supported by the Megatron "
                f"backbone; it implements {key}={value!r}"
            )
    reverse = {v: k for k, v in HF_LAYER_TYPES.items()}
    pattern = "".join(reverse[t] for t in hf_config.layers_block_type)
    _check_routing(pattern, hf_config.num_experts_per_tok, hf_config.norm_topk_prob)
    _check_gated_norm_eps(pattern, hf_config.layer_norm_epsilon, "layer_norm_epsilon")
    if hf_config.num_nextn_predict_layers:
        warnings.warn(
            f"HF config num_nextn_predict_layers={hf_config.num_nextn_predict_layers}: the "
            "multi-token-prediction head is not part of the Megatron backbone and is dropped",
            stacklevel=2,
        )
    if "M" in pattern and hf_config.time_step_min > 0:
        warnings.warn(
            f"HF config time_step_min={hf_config.time_step_min}: transformers clamps the Mamba "
            "step dt >= time_step_min, Megatron's MambaMixer does not; logits can differ where "
            "softplus(dt) < time_step_min (docs/hf_interop.md)",
            stacklevel=2,
        )
    values = {
        ours: getattr(hf_config, theirs)
        for ours, theirs in CONFIG_FIELDS
        if getattr(hf_config, theirs, None) is not None
    }
    eos = hf_config.eos_token_id
    values["eos_token_id"] = eos[0] if isinstance(eos, (list, tuple)) else eos
    values["pattern"] = pattern
    return BackboneConfig(**{**values, **overrides})


def hf_config_from_backbone(cfg: BackboneConfig, **overrides) -> NemotronHConfig:
    """The ``NemotronHConfig`` whose HF model computes what the Megatron backbone computes.

    ``time_step_min=0`` disables transformers' dt clamp (Megatron applies none). transformers
    5.x uses ``time_step_min`` also to draw a random ``dt_bias``, so build a random HF model from
    this config only with weight init disabled; ``from_pretrained`` is unaffected.
    """
    return NemotronHConfig(**hf_config_values(cfg, **overrides))


def hf_config_values(cfg: BackboneConfig, **overrides) -> dict:
    """The keyword arguments of :func:`hf_config_from_backbone`'s config (for config classes
    derived from ``NemotronHConfig``)."""
    _check_gated_norm_eps(cfg.pattern, cfg.norm_eps, "model.norm_eps")
    values = {theirs: getattr(cfg, ours) for ours, theirs in CONFIG_FIELDS}
    values.update(REQUIRED_HF_VALUES)
    values.update(
        layers_block_type=[HF_LAYER_TYPES[c] for c in cfg.pattern],
        eos_token_id=cfg.eos_token_id,
        norm_topk_prob=cfg.moe_top_k > 1,  # what Megatron's sigmoid router does
        n_shared_experts=1,
        time_step_min=0.0,
        time_step_limit=(0.0, math.inf),
        num_nextn_predict_layers=0,
        architectures=["NemotronHForCausalLM"],
    )
    values.update(overrides)
    return values


def _check_routing(pattern: str, top_k: int, norm_topk_prob: bool) -> None:
    if "E" in pattern and norm_topk_prob != (top_k > 1):
        raise ConversionError(
            f"HF norm_topk_prob={norm_topk_prob} with num_experts_per_tok={top_k}: Megatron's "
            "sigmoid router normalises the top-k probabilities exactly when top-k > 1"
        )


def _check_gated_norm_eps(pattern: str, eps: float, key: str) -> None:
    if "M" in pattern and eps != MEGATRON_GATED_NORM_EPS:
        raise ConversionError(
            f"{key}={eps}: Megatron's Mamba gated RMSNorm always uses eps="
            f"{MEGATRON_GATED_NORM_EPS} while HF uses {key} there too; set it to "
            f"{MEGATRON_GATED_NORM_EPS}"
        )


# ---- state dicts (TP=1, whole tensors) ----------------------------------------------------------


def default_naming() -> str:
    """The Megatron naming of what :func:`~twotower_train.model.backbone.build_backbone` builds
    in this process: ``"te"`` with Transformer Engine, ``"local"`` otherwise."""
    return "te" if backends.use_transformer_engine() else "local"


def hf_to_megatron_state(
    hf_state: dict[str, torch.Tensor], cfg: BackboneConfig, *, naming: str | None = None
) -> dict[str, torch.Tensor]:
    """HF tensors (checkpoint or transformers-module names) → Megatron state dict in ``naming``
    (default :func:`default_naming`). Every HF tensor must be used, every Megatron one found.
    Copied tensors are the input tensors themselves (no data is duplicated)."""
    hf_state = checkpoint_layout(hf_state)
    out, used = {}, set()
    for m in resolve(cfg, naming or default_naming()):
        missing = [name for name in m.hf if name not in hf_state]
        if missing:
            raise ConversionError(
                f"HF tensor {missing[0]!r} is missing (needed for Megatron {m.megatron!r})"
            )
        out[m.megatron] = TRANSFORMS[m.transform].to_megatron(*(hf_state[n] for n in m.hf), cfg)
        used.update(m.hf)
    _no_leftovers(set(hf_state) - used, "HF", cfg)
    return out


def megatron_to_hf_state(
    state: dict[str, torch.Tensor], cfg: BackboneConfig
) -> dict[str, torch.Tensor]:
    """Megatron state dict (TE or local names; ``_extra_state`` entries ignored) → HF tensors in
    checkpoint names."""
    state = {k: v for k, v in state.items() if not k.endswith("_extra_state")}
    out, used = {}, set()
    for te, local in zip(resolve(cfg, "te"), resolve(cfg, "local")):
        name = te.megatron if te.megatron in state else local.megatron
        if name not in state:
            raise ConversionError(
                f"Megatron tensor {te.megatron!r} (local spec: {local.megatron!r}) is missing"
            )
        tensors = TRANSFORMS[te.transform].to_hf(state[name], cfg)
        out.update(zip(te.hf, tensors))
        used.add(name)
    _no_leftovers(set(state) - used, "Megatron", cfg)
    return out


def _no_leftovers(names: set[str], side: str, cfg: BackboneConfig) -> None:
    if names:
        shown = ", ".join(sorted(names)[:5])
        raise ConversionError(
            f"{len(names)} {side} tensor(s) have no counterpart for pattern {cfg.pattern!r} "
            f"with {cfg.num_experts} experts: {shown}{' …' if len(names) > 5 else ''}"
        )


def load_megatron_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """``model.load_state_dict(state)``, strict except for Megatron's ``_extra_state`` entries;
    a tensor whose shape differs from the model's (built from the same config) is named."""
    expected = model.state_dict()
    for name, tensor in state.items():
        if name in expected and tuple(expected[name].shape) != tuple(tensor.shape):
            raise ConversionError(
                f"tensor {name!r} has shape {tuple(tensor.shape)} but the model built from the "
                f"config expects {tuple(expected[name].shape)}"
            )
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("_extra_state")]
    if missing or result.unexpected_keys:
        raise ConversionError(
            f"state does not fit the model: missing {missing[:5]}, unexpected "
            f"{result.unexpected_keys[:5]} (built with another spec? pass naming=...)"
        )


# ---- HF folders ---------------------------------------------------------------------------------


def read_hf_config(
    path: Path,
    config_class: type = NemotronHConfig,
    architecture: str = "NemotronHForCausalLM",
    hint: str = "a two-tower export is read by `twotower-convert import-twotower`",
):
    """``config.json`` of folder ``path`` as ``config_class``, checking its ``model_type`` and
    (when it lists any) its ``architectures``; ``hint`` says what to do with another one."""
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ConversionError(f"{config_file} not found: not a Hugging Face model folder")
    values = json.loads(config_file.read_text())
    if values.get("model_type") != config_class.model_type:
        raise ConversionError(
            f"{config_file} has model_type={values.get('model_type')!r}; expected "
            f"{config_class.model_type!r}"
        )
    architectures = values.get("architectures") or [architecture]
    if architecture not in architectures:
        raise ConversionError(
            f"{config_file} describes architectures={architectures}; expected {architecture!r} "
            f"({hint})"
        )
    return config_class.from_json_file(config_file)


def read_hf_state(path: Path, files: dict[str, str] | None = None) -> dict[str, torch.Tensor]:
    """Every tensor of folder ``path`` except ``mtp.*`` (skipped with a warning naming them), in
    either on-disk layout: the Hub's / ``save_pretrained``'s (``backbone.…``, one tensor per
    expert) or transformers' module layout (``model.…``, stacked experts;
    ``save_pretrained(save_original_format=False)``)."""
    files = tensor_files(path) if files is None else files
    mtp = sorted(name for name in files if name.startswith(MTP_PREFIX))
    if mtp:
        shown = ", ".join(mtp[:3]) + (" …" if len(mtp) > 3 else "")
        warnings.warn(
            f"{path}: skipping {len(mtp)} multi-token-prediction tensor(s) the backbone has no "
            f"counterpart for: {shown}",
            stacklevel=2,
        )
    return read_tensors(path, (n for n in files if not n.startswith(MTP_PREFIX)), files)


def load_hf_folder(
    path: str | os.PathLike, *, naming: str | None = None, **overrides
) -> tuple[BackboneConfig, dict[str, torch.Tensor]]:
    """Read ``config.json`` and the safetensors weights (one file, or shards listed in
    ``model.safetensors.index.json``) of an HF ``nemotron_h`` folder → (config, Megatron state).
    ``overrides`` go to :func:`backbone_config_from_hf`."""
    path = Path(path)
    cfg = backbone_config_from_hf(read_hf_config(path), **overrides)
    files = tensor_files(path)
    present = checkpoint_names(files, cfg)
    for name in (name for m in resolve(cfg) for name in m.hf):
        if name not in present:
            raise ConversionError(f"tensor {name!r} is missing from {listing(path)}")
    return cfg, hf_to_megatron_state(read_hf_state(path, files), cfg, naming=naming)


def save_hf_folder(
    cfg: BackboneConfig,
    state: dict[str, torch.Tensor],
    path: str | os.PathLike,
    *,
    tokenizer=None,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
    overwrite: bool = False,
) -> Path:
    """Write a Megatron state as an HF ``nemotron_h`` folder (the Hub layout, which stock
    transformers loads): ``config.json``, ``generation_config.json``, safetensors shards
    ``model-0000k-of-0000n.safetensors``, ``model.safetensors.index.json`` and, if given,
    ``tokenizer``'s files. The folder appears atomically
    (:func:`~twotower_train.convert.hf_files.atomic_folder`)."""
    path = Path(path)
    hf_state = megatron_to_hf_state(state, cfg)
    with atomic_folder(path, overwrite=overwrite) as tmp:
        dtype = hf_state["backbone.embeddings.weight"].dtype  # that of (nearly) every tensor
        save_config(hf_config_from_backbone(cfg, dtype=str(dtype).removeprefix("torch.")), tmp)
        generation_config(cfg).save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        write_shards(hf_state, tmp, max_shard_bytes)
    return path


def generation_config(cfg: BackboneConfig):
    """``generation_config.json``: the special ids ``generate()`` uses."""
    return GenerationConfig(
        bos_token_id=cfg.bos_token_id, eos_token_id=cfg.eos_token_id, pad_token_id=cfg.pad_token_id
    )
