"""Name table between Hugging Face ``nemotron_h`` checkpoints and our Megatron backbone.

The table is data: wildcard rules with ``{i}`` (layer index) and ``{j}`` (routed-expert index),
grouped by layer type (the pattern character, docs/backbone.md), plus two *named transforms* for
the tensors that are not 1:1 copies. Everything that converts weights
(:mod:`twotower_train.convert.nemotron_h`) is driven by it.

Names on each side
------------------
* **HF**: the on-disk checkpoint names of ``NemotronHForCausalLM`` — ``backbone.…`` prefix, one
  tensor per routed expert (``mixer.experts.{j}.up_proj.weight``). This is what released
  ``nemotron_h`` folders contain and what transformers' ``save_pretrained`` writes.
  transformers ≥ 5 holds the model in memory under ``model.…`` with the experts stacked into
  3-D tensors; :func:`checkpoint_layout` / :func:`module_layout` translate between the two.
* **Megatron, canonical**: the state-dict names of a TP=1 model built with Megatron-Core's
  Transformer-Engine hybrid spec (fused pre-norms such as ``mixer.in_proj.layer_norm_weight``,
  grouped-GEMM experts ``mlp.experts.linear_fc1.weight{j}``). Except for the expert and conv1d
  tensors these are also the distributed-checkpoint keys.
* **Megatron, local**: the local (non-TE) spec keeps separate norm modules and
  ``SequentialMLP`` experts; :data:`LOCAL_NAMES` renames canonical → local. Its norm entries
  are the inverse of the local spec's ``sharded_state_dict_keys_map`` (a test checks this).

Named transforms (TP=1, whole tensors; tensor-parallel resharding is dist-checkpointing's job)
--------------------------------------------------------------------------------------------
* ``copy`` — the same tensor. Covers Mamba ``in_proj`` (both order its rows z, x, B, C, dt),
  ``conv1d`` (both ``(conv_dim, 1, kernel)``, rows x, B, C), ``A_log``/``D``/``dt_bias``
  (``(heads,)``), the gated norm, router weight and expert bias, experts and norms.
* ``qkv`` — HF's separate ``q_proj``/``k_proj``/``v_proj`` ↔ Megatron's fused ``linear_qkv``,
  whose rows are interleaved per KV group: ``[q heads of group g…, k_g, v_g]`` for g = 0..G-1.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch

from twotower_train.model.config import BackboneConfig

# HF ``layers_block_type`` value of each pattern character.
HF_LAYER_TYPES = {"M": "linear_attention", "*": "full_attention", "E": "moe", "-": "mlp"}


@dataclass(frozen=True)
class Rule:
    """One Megatron tensor ↔ one or more HF tensors, converted by the named ``transform``."""

    megatron: str
    hf: tuple[str, ...]
    transform: str = "copy"


def _rule(megatron: str, *hf: str, transform: str = "copy") -> Rule:
    return Rule(megatron, hf, transform)


GLOBAL_RULES: tuple[Rule, ...] = (
    _rule("embedding.word_embeddings.weight", "backbone.embeddings.weight"),
    _rule("decoder.final_norm.weight", "backbone.norm_f.weight"),
    _rule("output_layer.weight", "lm_head.weight"),
)

_M, _H = "decoder.layers.{i}.", "backbone.layers.{i}."

LAYER_RULES: dict[str, tuple[Rule, ...]] = {
    "M": (
        _rule(_M + "mixer.in_proj.layer_norm_weight", _H + "norm.weight"),
        _rule(_M + "mixer.in_proj.weight", _H + "mixer.in_proj.weight"),
        _rule(_M + "mixer.conv1d_weight", _H + "mixer.conv1d.weight"),
        _rule(_M + "mixer.conv1d_bias", _H + "mixer.conv1d.bias"),
        _rule(_M + "mixer.A_log", _H + "mixer.A_log"),
        _rule(_M + "mixer.D", _H + "mixer.D"),
        _rule(_M + "mixer.dt_bias", _H + "mixer.dt_bias"),
        _rule(_M + "mixer.norm.weight", _H + "mixer.norm.weight"),
        _rule(_M + "mixer.out_proj.weight", _H + "mixer.out_proj.weight"),
    ),
    "*": (
        _rule(_M + "self_attention.linear_qkv.layer_norm_weight", _H + "norm.weight"),
        _rule(
            _M + "self_attention.linear_qkv.weight",
            _H + "mixer.q_proj.weight",
            _H + "mixer.k_proj.weight",
            _H + "mixer.v_proj.weight",
            transform="qkv",
        ),
        _rule(_M + "self_attention.linear_proj.weight", _H + "mixer.o_proj.weight"),
    ),
    "-": (
        _rule(_M + "mlp.linear_fc1.layer_norm_weight", _H + "norm.weight"),
        _rule(_M + "mlp.linear_fc1.weight", _H + "mixer.up_proj.weight"),
        _rule(_M + "mlp.linear_fc2.weight", _H + "mixer.down_proj.weight"),
    ),
    "E": (
        _rule(_M + "pre_mlp_layernorm.weight", _H + "norm.weight"),
        _rule(_M + "mlp.router.weight", _H + "mixer.gate.weight"),
        _rule(_M + "mlp.router.expert_bias", _H + "mixer.gate.e_score_correction_bias"),
        _rule(_M + "mlp.experts.linear_fc1.weight{j}", _H + "mixer.experts.{j}.up_proj.weight"),
        _rule(_M + "mlp.experts.linear_fc2.weight{j}", _H + "mixer.experts.{j}.down_proj.weight"),
        _rule(
            _M + "mlp.shared_experts.linear_fc1.weight", _H + "mixer.shared_experts.up_proj.weight"
        ),
        _rule(
            _M + "mlp.shared_experts.linear_fc2.weight",
            _H + "mixer.shared_experts.down_proj.weight",
        ),
    ),
}

# Canonical (TE) Megatron name → local-spec name, per layer type; names not listed are shared.
LOCAL_NAMES: dict[str, dict[str, str]] = {
    "M": {_M + "mixer.in_proj.layer_norm_weight": _M + "norm.weight"},
    "*": {_M + "self_attention.linear_qkv.layer_norm_weight": _M + "input_layernorm.weight"},
    "-": {_M + "mlp.linear_fc1.layer_norm_weight": _M + "pre_mlp_layernorm.weight"},
    "E": {
        _M + "mlp.experts.linear_fc1.weight{j}": _M
        + "mlp.experts.local_experts.{j}.linear_fc1.weight",
        _M + "mlp.experts.linear_fc2.weight{j}": _M
        + "mlp.experts.local_experts.{j}.linear_fc2.weight",
    },
}

MEGATRON_NAMINGS = ("te", "local")


# ---- named transforms ---------------------------------------------------------------------------


def fuse_qkv(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cfg: BackboneConfig
) -> torch.Tensor:
    """HF q (heads·d, h), k and v (groups·d, h) → Megatron linear_qkv ((heads+2·groups)·d, h)."""
    g, d = cfg.num_query_groups, cfg.head_dim
    hidden = q.shape[-1]
    q = q.reshape(g, -1, hidden)  # (groups, heads_per_group·d, h)
    k = k.reshape(g, d, hidden)  # (groups, d, h)
    v = v.reshape(g, d, hidden)
    return torch.cat([q, k, v], dim=1).reshape(-1, hidden)


def split_qkv(qkv: torch.Tensor, cfg: BackboneConfig) -> list[torch.Tensor]:
    """Inverse of :func:`fuse_qkv`; returns independent (non-aliasing) q, k, v tensors."""
    g, d = cfg.num_query_groups, cfg.head_dim
    hidden = qkv.shape[-1]
    q_rows = cfg.num_attention_heads // g * d
    grouped = qkv.reshape(g, q_rows + 2 * d, hidden)  # (groups, [q…, k, v] rows, h)
    q, k, v = grouped.split([q_rows, d, d], dim=1)
    return [t.reshape(-1, hidden).clone() for t in (q, k, v)]


class Transform(NamedTuple):
    to_megatron: Callable[..., torch.Tensor]  # (*hf_tensors, cfg) -> tensor
    to_hf: Callable[[torch.Tensor, BackboneConfig], list[torch.Tensor]]


TRANSFORMS: dict[str, Transform] = {
    "copy": Transform(lambda t, cfg: t, lambda t, cfg: [t]),
    "qkv": Transform(fuse_qkv, split_qkv),
}


# ---- resolving the table for one config ---------------------------------------------------------


class Mapping(NamedTuple):
    """A rule with every placeholder filled in: concrete names on both sides."""

    megatron: str
    hf: tuple[str, ...]
    transform: str


def resolve(cfg: BackboneConfig, naming: str = "te") -> list[Mapping]:
    """Every tensor of the backbone described by ``cfg``, with Megatron names in ``naming``
    (``"te"`` canonical or ``"local"``). The order is the same for both namings."""
    if naming not in MEGATRON_NAMINGS:
        raise ValueError(f"naming={naming!r}; use one of {MEGATRON_NAMINGS}")
    out = [Mapping(r.megatron, r.hf, r.transform) for r in GLOBAL_RULES]
    for i, symbol in enumerate(cfg.pattern):
        renames = LOCAL_NAMES[symbol] if naming == "local" else {}
        for rule in LAYER_RULES[symbol]:
            megatron = renames.get(rule.megatron, rule.megatron)
            experts = range(cfg.num_experts) if "{j}" in rule.megatron else (None,)
            for j in experts:
                out.append(
                    Mapping(
                        megatron.format(i=i, j=j),
                        tuple(name.format(i=i, j=j) for name in rule.hf),
                        rule.transform,
                    )
                )
    return out


# ---- transformers' in-memory layout ↔ checkpoint layout ----------------------------------------

_STACKED_EXPERTS = (".mixer.experts.up_proj", ".mixer.experts.down_proj")


def checkpoint_layout(hf_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF state in checkpoint names. Accepts checkpoint names unchanged, or transformers ≥ 5
    module names (``model.`` prefix, experts stacked as (experts, out, in) tensors)."""
    out = {}
    for name, tensor in hf_state.items():
        if name.startswith("model."):
            name = "backbone." + name[len("model.") :]
        if name.endswith(_STACKED_EXPERTS):
            stem, proj = name.rsplit(".", 1)
            for j, expert in enumerate(tensor.unbind(0)):
                out[f"{stem}.{j}.{proj}.weight"] = expert
        else:
            out[name] = tensor
    return out


def checkpoint_names(names, cfg: BackboneConfig) -> set[str]:
    """The checkpoint names that tensors called ``names`` (either layout) provide."""
    out = set()
    for name in names:
        if name.startswith("model."):
            name = "backbone." + name[len("model.") :]
        if name.endswith(_STACKED_EXPERTS):
            stem, proj = name.rsplit(".", 1)
            out.update(f"{stem}.{j}.{proj}.weight" for j in range(cfg.num_experts))
        else:
            out.add(name)
    return out


def module_layout(
    hf_state: dict[str, torch.Tensor], cfg: BackboneConfig
) -> dict[str, torch.Tensor]:
    """Checkpoint-named HF state → the names and stacked experts of a transformers ≥ 5
    ``NemotronHForCausalLM`` module (for ``load_state_dict``)."""
    out = {}
    for name, tensor in hf_state.items():
        if name.startswith("backbone."):
            name = "model." + name[len("backbone.") :]
        out[name] = tensor
    for i, symbol in enumerate(cfg.pattern):
        if symbol != "E":
            continue
        for proj in ("up_proj", "down_proj"):
            stem = f"model.layers.{i}.mixer.experts"
            per_expert = [out.pop(f"{stem}.{j}.{proj}.weight") for j in range(cfg.num_experts)]
            out[f"{stem}.{proj}"] = torch.stack(per_expert)
    return out


# ---- two-tower names ---------------------------------------------------------------------------
# The two-tower folder's layout (the released checkpoint's) is convert/released_layout.py's;
# adaLN-single keeps the released names (``t_embedder.*``, ``t_block.*``,
# ``scale_shift_tables.*``) at the top of it.

ADALN_PREFIX = "denoiser.adaln."
"""Where ``TwoTowerModel`` holds adaLN-single; the export drops the prefix."""
OLD_ADALN_TENSOR = "adaln.mlp.0.weight"
"""A tensor only exports of the pre-release adaLN formulation hold."""


def adaln_names(num_layers: int) -> list[str]:
    """adaLN-single's tensor names (the released checkpoint's) for a stack of ``num_layers``."""
    names = [f"t_embedder.mlp.{i}.{kind}" for i in (0, 2) for kind in ("weight", "bias")]
    names += ["t_block.1.weight", "t_block.1.bias"]
    return names + [f"scale_shift_tables.{i}" for i in range(num_layers)]
