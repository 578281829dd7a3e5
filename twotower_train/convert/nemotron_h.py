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
has no expert-group routing (``n_group``), no latent MoE projection, no MTP head, untied
embeddings, biasless linears, and a gated Mamba norm whose eps is fixed at 1e-5. HF clamps
``dt ≥ time_step_min`` in its Mamba mixer; Megatron's training forward does not clamp, so
:func:`hf_config_from_backbone` writes ``time_step_min=0`` (docs/hf_interop.md).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import NemotronHConfig

from twotower_train import backends
from twotower_train.errors import UserError
from twotower_train.convert.hf_names import (
    HF_LAYER_TYPES,
    TRANSFORMS,
    checkpoint_layout,
    resolve,
)
from twotower_train.model.config import BackboneConfig

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
    "num_nextn_predict_layers": 0,
    "sliding_window": None,
}
MEGATRON_GATED_NORM_EPS = 1e-5  # MambaMixer builds its gated RMSNorm with eps=1e-5, always.

SAFETENSORS_INDEX = "model.safetensors.index.json"
SAFETENSORS_SINGLE = "model.safetensors"


class ConversionError(UserError, ValueError):
    """A checkpoint or config cannot be converted; the message names the file, tensor or key."""


# ---- configs ------------------------------------------------------------------------------------


def backbone_config_from_hf(hf_config: NemotronHConfig | dict, **overrides) -> BackboneConfig:
    """The backbone config of an HF ``nemotron_h`` config. ``overrides`` set fields HF does not
    carry (``moe_router_bias_update_rate``, ``moe_token_dispatcher``) or replace any other."""
    if isinstance(hf_config, dict):
        hf_config = NemotronHConfig.from_dict(hf_config)
    if getattr(hf_config, "model_type", None) != "nemotron_h":
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
    if "M" in pattern and hf_config.time_step_min > 0:
        warnings.warn(
            f"HF config time_step_min={hf_config.time_step_min}: transformers clamps the Mamba "
            "step dt >= time_step_min, Megatron's MambaMixer does not; logits can differ where "
            "softplus(dt) < time_step_min (docs/hf_interop.md)",
            stacklevel=2,
        )
    values = {ours: getattr(hf_config, theirs) for ours, theirs in CONFIG_FIELDS
              if getattr(hf_config, theirs, None) is not None}
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
        architectures=["NemotronHForCausalLM"],
    )
    values.update(overrides)
    return NemotronHConfig(**values)


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
    """``model.load_state_dict(state)``, strict except for Megatron's ``_extra_state`` entries."""
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("_extra_state")]
    if missing or result.unexpected_keys:
        raise ConversionError(
            f"state does not fit the model: missing {missing[:5]}, unexpected "
            f"{result.unexpected_keys[:5]} (built with another spec? pass naming=...)"
        )


# ---- HF folders ---------------------------------------------------------------------------------


def load_hf_folder(
    path: str | os.PathLike, *, naming: str | None = None, **overrides
) -> tuple[BackboneConfig, dict[str, torch.Tensor]]:
    """Read ``config.json`` and the safetensors weights (one file, or shards listed in
    ``model.safetensors.index.json``) of an HF ``nemotron_h`` folder → (config, Megatron state).
    ``overrides`` go to :func:`backbone_config_from_hf`."""
    path = Path(path)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ConversionError(f"{config_file} not found: not a Hugging Face model folder")
    model_type = json.loads(config_file.read_text()).get("model_type")
    if model_type != "nemotron_h":
        raise ConversionError(f"{config_file} has model_type={model_type!r}; expected 'nemotron_h'")
    cfg = backbone_config_from_hf(NemotronHConfig.from_json_file(config_file), **overrides)
    files = _tensor_files(path)
    listing = SAFETENSORS_INDEX if (path / SAFETENSORS_INDEX).is_file() else SAFETENSORS_SINGLE
    for name in (name for m in resolve(cfg) for name in m.hf):
        if name not in files:
            raise ConversionError(f"tensor {name!r} is missing from {path / listing}")
    hf_state = {}
    for file in sorted(set(files.values())):
        with safe_open(path / file, framework="pt") as f:
            present = set(f.keys())
            for name in (n for n, fl in files.items() if fl == file):
                if name not in present:
                    raise ConversionError(f"tensor {name!r} is missing from {path / file}")
                hf_state[name] = f.get_tensor(name)
    return cfg, hf_to_megatron_state(hf_state, cfg, naming=naming)


def _tensor_files(path: Path) -> dict[str, str]:
    """HF tensor name → the safetensors file (relative to ``path``) that holds it."""
    index = path / SAFETENSORS_INDEX
    if index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ConversionError(f"{index} has no 'weight_map'")
        for file in sorted(set(weight_map.values())):
            if not (path / file).is_file():
                raise ConversionError(f"shard {path / file} listed in {index} not found")
        return weight_map
    single = path / SAFETENSORS_SINGLE
    if not single.is_file():
        raise ConversionError(f"neither {single} nor {index} found")
    with safe_open(single, framework="pt") as f:
        return {name: SAFETENSORS_SINGLE for name in f.keys()}


def save_hf_folder(
    cfg: BackboneConfig,
    state: dict[str, torch.Tensor],
    path: str | os.PathLike,
    *,
    max_shard_bytes: int = 5 * 2**30,
    overwrite: bool = False,
) -> Path:
    """Write a Megatron state as an HF ``nemotron_h`` folder: ``config.json``, safetensors shards
    ``model-0000k-of-0000n.safetensors`` and ``model.safetensors.index.json``. The folder is
    built in a temporary sibling and renamed into place: a crash never leaves a partial folder
    at ``path`` (with ``overwrite``, the previous one is moved aside to ``.<name>.old`` first)."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    hf_state = megatron_to_hf_state(state, cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        dtype = next(iter(hf_state.values())).dtype
        hf_config_from_backbone(cfg, dtype=str(dtype).removeprefix("torch.")).save_pretrained(tmp)
        _write_shards(hf_state, tmp, max_shard_bytes)
        old = path.with_name(f".{path.name}.old") if path.exists() else None
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
            path.rename(old)
        tmp.rename(path)
        if old is not None:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _write_shards(hf_state: dict[str, torch.Tensor], folder: Path, max_shard_bytes: int) -> None:
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in hf_state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensor.detach().to("cpu").contiguous()  # e.g. from a GPU model
        size += nbytes
    weight_map = {}
    for k, shard in enumerate(shards, start=1):
        file = f"model-{k:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, folder / file, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, file))
    total = sum(t.numel() * t.element_size() for t in hf_state.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / SAFETENSORS_INDEX).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
