"""A tiny two-tower model and its Hugging Face export, for the export tests (fp32, CPU, seeded).

Both towers start from a random HF backbone of realistic scale (``models.random_hf_model``);
the denoiser's weights are then perturbed and adaLN-single is randomised, so a tensor mapped to
the wrong tower, layer or role moves the logits far beyond the tolerance.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from tests.convert.models import parity_config, random_hf_model
from twotower_train.convert.nemotron_h import hf_to_megatron_state
from twotower_train.convert.two_tower import save_twotower_folder
from twotower_train.model.two_tower import TwoTowerModel

BLOCK_SIZE = 8


def random_two_tower(cfg=None, seed: int = 0) -> TwoTowerModel:
    cfg = cfg or parity_config()
    model = TwoTowerModel.build(cfg)
    model.load_backbone_state(hf_to_megatron_state(random_hf_model(cfg, seed).state_dict(), cfg))
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.denoiser.backbone.parameters():
            p.mul_(1 + 0.1 * torch.randn(p.shape, generator=g))
        for p in model.denoiser.adaln.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model.eval()


def export(model: TwoTowerModel, folder: Path, tokenizer=None, **kw) -> Path:
    kw.setdefault("block_size", BLOCK_SIZE)
    return save_twotower_folder(model.cfg, model.state_dict(), folder, tokenizer=tokenizer, **kw)


def load_export(folder: Path, **kw):
    return AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, **kw).eval()


def export_module(model, name: str):
    """The export folder's copy of module ``name`` (e.g. ``cache``), as the model imported it."""
    package = type(model).__module__.rsplit(".", 1)[0]
    return importlib.import_module(f"{package}.{name}")


def left_padded(prompts: list[list[int]], pad: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), both (b, longest prompt), as a left-padding tokenizer gives."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros(len(prompts), width, dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.tensor(prompt)
        mask[row, width - len(prompt) :] = 1
    return ids, mask
