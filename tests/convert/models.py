"""Tiny HF / Megatron model pairs for the converter tests (fp32, CPU, seeded)."""

from __future__ import annotations

import math

import torch
from transformers import NemotronHForCausalLM
from transformers.initialization import no_init_weights

from twotower_train.convert.hf_names import module_layout
from twotower_train.convert.nemotron_h import (
    hf_config_from_backbone,
    load_megatron_state,
    megatron_to_hf_state,
)
from twotower_train.model.backbone import build_backbone, forward_logits
from twotower_train.model.config import BackboneConfig, preset

# All four layer types, each twice and in different neighbourhoods (catches layer-index slips);
# the tiny preset's GQA (4 heads / 2 groups), 2 Mamba groups and 4 experts, top-2.
PATTERN = "M*E-E*M-"

# fp32 logits of O(1): the two stacks differ only in the order of reductions (chunked SSD scan,
# attention, expert accumulation), ~1e-6 after eight layers; 1e-4 leaves two orders of margin.
LOGIT_ATOL = 1e-4


def parity_config() -> BackboneConfig:
    return preset("tiny", pattern=PATTERN)


def _fill(name: str, t: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Seeded values of a realistic scale for one HF tensor (norms ≈ 1, dt ≈ 0.1, …)."""
    r = torch.randn(t.shape, generator=g)
    if name.endswith("norm.weight") or name.endswith("norm_f.weight"):
        return 1 + 0.1 * r
    if name.endswith("A_log"):
        return torch.log(1 + 15 * torch.rand(t.shape, generator=g))
    if name.endswith("dt_bias"):
        return 0.5 * r - 2.0
    if name.endswith("e_score_correction_bias"):
        return 0.1 * r
    if name.endswith("gate.weight"):
        return 0.5 * r
    if name.endswith("embeddings.weight") or t.dim() == 1:
        return r
    if name.endswith("conv1d.weight"):
        return 0.3 * r
    return r / math.sqrt(t.shape[-1])  # linear layers: unit-variance outputs


def random_hf_model(cfg: BackboneConfig, seed: int = 0) -> NemotronHForCausalLM:
    """An fp32 HF model for ``cfg`` with every tensor drawn from a seeded generator, eval mode."""
    with no_init_weights():  # hf_config_from_backbone sets time_step_min=0 (see its docstring)
        model = NemotronHForCausalLM(hf_config_from_backbone(cfg))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in sorted(model.state_dict().items()):
            t.copy_(_fill(name, t, g))
    return model.eval()


def random_megatron_model(cfg: BackboneConfig, seed: int = 0) -> torch.nn.Module:
    """Megatron's own random init, with the constant-initialised vectors (norms, D, biases)
    perturbed so that a wrong mapping of any of them shows in the logits; eval mode."""
    model = build_backbone(cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _name, t in sorted(model.state_dict().items()):
            if isinstance(t, torch.Tensor) and t.dim() == 1:
                t.add_(0.1 * torch.randn(t.shape, generator=g))
    return model.eval()


def megatron_from_state(cfg: BackboneConfig, state: dict) -> torch.nn.Module:
    model = build_backbone(cfg)
    load_megatron_state(model, state)
    return model.eval()


def hf_from_megatron(cfg: BackboneConfig, model: torch.nn.Module) -> NemotronHForCausalLM:
    hf = random_hf_model(cfg, seed=99)
    hf_state = megatron_to_hf_state(model.state_dict(), cfg)
    hf.load_state_dict(module_layout(hf_state, cfg), strict=True)
    return hf


@torch.no_grad()
def hf_logits(model: NemotronHForCausalLM, tokens: torch.Tensor) -> torch.Tensor:
    return model(input_ids=tokens, use_cache=False).logits


@torch.no_grad()
def megatron_logits(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    return forward_logits(model, tokens)


def greedy(logits_fn, prompt: torch.Tensor, steps: int) -> torch.Tensor:
    """Greedy continuation by full recomputation (no caches: this compares the models only)."""
    tokens = prompt
    for _ in range(steps):
        next_token = logits_fn(tokens)[:, -1].argmax(-1, keepdim=True)
        tokens = torch.cat([tokens, next_token], dim=1)
    return tokens[:, prompt.shape[1] :]
