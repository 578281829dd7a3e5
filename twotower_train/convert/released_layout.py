"""The released Nemotron-TwoTower checkpoint layout (issue 22 item 2; notes: DESIGN.md §6).

NVIDIA's released folder names its tensors ``context_tower.*`` / ``context_lm_head.weight`` (the
frozen AR tower and its head), ``denoiser_tower.*`` / ``lm_head.weight`` (the denoiser and ITS
head), ``t_embedder.*``, ``t_block.*``, ``scale_shift_tables.*``; each tower's sub-names are the
Nemotron-H Hub checkpoint names (one tensor per expert). This module maps a ``TwoTowerModel``
state (TP=1) to and from that layout, tensor for tensor (no dtype change).

Not yet wired into ``twotower-convert export-hf`` (which still writes the export's own module
names): the export's modeling class must first hold the released module names. transformers 5
loads the per-expert tensors of two stock ``NemotronHModel`` sub-modules named ``context_tower`` /
``denoiser_tower`` under a remote-code root by itself (its ``nemotron_h`` conversion mapping is
scoped to each sub-module) and ``save_pretrained`` writes them back per expert
(tests/convert/test_released_layout.py checks both on a stand-in class).
"""

from __future__ import annotations

import torch

from twotower_train.convert.hf_files import ConversionError
from twotower_train.convert.hf_names import ADALN_PREFIX, adaln_names
from twotower_train.convert.nemotron_h import hf_to_megatron_state, megatron_to_hf_state
from twotower_train.model.config import BackboneConfig

RELEASED_TOWERS: tuple[tuple[str, dict[str, str]], ...] = (
    ("context_tower.backbone.", {"backbone.": "context_tower.", "lm_head.": "context_lm_head."}),
    ("denoiser.backbone.", {"backbone.": "denoiser_tower.", "lm_head.": "lm_head."}),
)
"""Megatron tower prefix → {Hub checkpoint prefix of the backbone → released prefix}."""


def _rename(name: str, renames: dict[str, str]) -> str:
    old = next((prefix for prefix in renames if name.startswith(prefix)), None)
    if old is None:
        raise ConversionError(f"backbone tensor {name!r} has no released counterpart")
    return renames[old] + name[len(old) :]


def megatron_to_released_state(
    state: dict[str, torch.Tensor], cfg: BackboneConfig
) -> dict[str, torch.Tensor]:
    """``TwoTowerModel`` state (TE or local names; ``_extra_state`` ignored) → released tensors."""
    state = {k: v for k, v in state.items() if not k.endswith("_extra_state")}
    out, used = {}, set()
    for megatron_prefix, renames in RELEASED_TOWERS:
        tower = {
            k[len(megatron_prefix) :]: v for k, v in state.items() if k.startswith(megatron_prefix)
        }
        used.update(megatron_prefix + k for k in tower)
        try:
            hub = megatron_to_hf_state(tower, cfg)
        except ConversionError as error:
            raise ConversionError(f"{megatron_prefix}*: {error}") from None
        out.update({_rename(k, renames): v for k, v in hub.items()})
    for name in adaln_names(len(cfg.pattern)):
        if ADALN_PREFIX + name not in state:
            raise ConversionError(f"Megatron tensor {ADALN_PREFIX + name!r} is missing")
        out[name] = state[ADALN_PREFIX + name]
        used.add(ADALN_PREFIX + name)
    leftovers = sorted(set(state) - used)
    if leftovers:
        raise ConversionError(
            f"{len(leftovers)} Megatron tensor(s) have no released counterpart: "
            f"{', '.join(leftovers[:5])}"
        )
    return out


def released_to_megatron_state(
    state: dict[str, torch.Tensor], cfg: BackboneConfig, *, naming: str | None = None
) -> dict[str, torch.Tensor]:
    """Released tensors → ``TwoTowerModel`` state in ``naming`` (default: what this process
    builds). Inverse of :func:`megatron_to_released_state`."""
    adaln = set(adaln_names(len(cfg.pattern)))
    # Longest released prefix first: "context_lm_head." before "lm_head." cannot collide, but
    # the order keeps the match unambiguous whatever the table holds.
    rules = sorted(
        (
            (released, tower, hub)
            for tower, renames in RELEASED_TOWERS
            for hub, released in renames.items()
        ),
        key=lambda rule: -len(rule[0]),
    )
    towers: dict[str, dict[str, torch.Tensor]] = {tower: {} for tower, _ in RELEASED_TOWERS}
    out = {}
    for name, tensor in state.items():
        if name in adaln:
            out[ADALN_PREFIX + name] = tensor
            continue
        rule = next((r for r in rules if name.startswith(r[0])), None)
        if rule is None:
            raise ConversionError(
                f"released tensor {name!r} belongs to neither tower nor the time conditioning"
            )
        released, tower, hub = rule
        towers[tower][hub + name[len(released) :]] = tensor
    missing = sorted(adaln - set(state))
    if missing:
        raise ConversionError(f"released tensor {missing[0]!r} is missing")
    for megatron_prefix, tower in towers.items():
        try:
            converted = hf_to_megatron_state(tower, cfg, naming=naming)
        except ConversionError as error:
            raise ConversionError(f"{megatron_prefix}*: {error}") from None
        out.update({megatron_prefix + k: v for k, v in converted.items()})
    return out
