"""The released Nemotron-TwoTower checkpoint layout (issue 22 item 2; notes: DESIGN.md §6).

NVIDIA's released folder names its tensors ``context_tower.*`` / ``context_lm_head.weight`` (the
frozen AR tower and its head), ``denoiser_tower.*`` / ``lm_head.weight`` (the denoiser and ITS
head), ``t_embedder.*``, ``t_block.*``, ``scale_shift_tables.*``; each tower's sub-names are the
Nemotron-H Hub checkpoint names (one tensor per expert). This module maps a ``TwoTowerModel``
state (TP=1) to and from that layout, tensor for tensor (no dtype change), and reads a folder
of it tensor by tensor (:func:`released_tensors`, :func:`stream_into_model`).

``twotower-convert export-hf`` writes this layout and the export's modeling class holds these
module names. transformers 5 loads the per-expert tensors of the two stock ``NemotronHModel``
sub-modules named ``context_tower`` / ``denoiser_tower`` by itself (its ``nemotron_h``
conversion mapping is scoped to each sub-module) and ``save_pretrained`` writes them back per
expert (tests/convert/test_released_layout.py checks both on a stand-in class).

Reading also accepts the layout our exports had before (transformers' in-memory names:
``model.*`` / ``lm_head.*`` for the context tower, ``denoiser.*`` with its head
``denoiser.lm_head.*``, stacked experts): :data:`OLD_EXPORT_RENAMES`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import safe_open
from tqdm import tqdm

from twotower_train.convert.hf_files import ConversionError, listing
from twotower_train.convert.hf_names import (
    ADALN_PREFIX,
    TRANSFORMS,
    adaln_names,
    checkpoint_layout,
    resolve,
)
from twotower_train.convert.nemotron_h import (
    default_naming,
    hf_to_megatron_state,
    megatron_to_hf_state,
)
from twotower_train.model.config import BackboneConfig

RELEASED_TOWERS: tuple[tuple[str, dict[str, str]], ...] = (
    ("context_tower.backbone.", {"backbone.": "context_tower.", "lm_head.": "context_lm_head."}),
    ("denoiser.backbone.", {"backbone.": "denoiser_tower.", "lm_head.": "lm_head."}),
)
"""Megatron tower prefix → {Hub checkpoint prefix of the backbone → released prefix}."""
OLD_EXPORT_RENAMES: tuple[tuple[str, str], ...] = (
    ("denoiser.lm_head.", "lm_head."),
    ("denoiser.", "denoiser_tower."),
    ("model.", "context_tower."),
    ("lm_head.", "context_lm_head."),
)
"""Our exports' former names → released names (first matching prefix; experts were stacked)."""


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


# ---- reading a folder -------------------------------------------------------------------------


def is_old_export_layout(names) -> bool:
    """Whether tensor ``names`` are our former export layout (``model.*``, ``denoiser.*``)."""
    return any(name.startswith(("model.", "denoiser.")) for name in names)


def released_tensors(
    path: Path, files: dict[str, str], *, old_layout: bool = False
) -> Iterator[tuple[str, torch.Tensor]]:
    """(released name, tensor) of every tensor in ``files`` (name → shard of ``path``), shard by
    shard, one tensor at a time; ``old_layout`` renames :data:`OLD_EXPORT_RENAMES` and splits
    stacked experts."""
    shards = sorted(set(files.values()))
    with tqdm(total=len(files), desc=f"reading {path.name}", unit="tensor", disable=None) as bar:
        for file in shards:
            with safe_open(path / file, framework="pt") as f:
                present = set(f.keys())
                for name in sorted(n for n, shard in files.items() if shard == file):
                    if name not in present:
                        raise ConversionError(f"tensor {name!r} is missing from {path / file}")
                    tensor = f.get_tensor(name)
                    bar.update()
                    if old_layout:
                        yield from from_old_layout(name, tensor)
                    else:
                        yield name, tensor


def from_old_layout(name: str, tensor: torch.Tensor) -> Iterator[tuple[str, torch.Tensor]]:
    """A tensor of our former export layout → its released name(s) (stacked experts split)."""
    old = next((o for o, _ in OLD_EXPORT_RENAMES if name.startswith(o)), None)
    if old is None:
        yield name, tensor
        return
    tower, rest = (dict(OLD_EXPORT_RENAMES)[old] + name[len(old) :]).split(".", 1)
    for hub, split in checkpoint_layout({"backbone." + rest: tensor}).items():
        yield f"{tower}.{hub.removeprefix('backbone.')}", split


def released_table(cfg: BackboneConfig, naming: str) -> dict[str, tuple[str, tuple[str, ...]]]:
    """Released tensor name → (Megatron name, the released names it is made of) for the model
    described by ``cfg`` in ``naming``; adaLN-single's tensors map one to one."""
    table = {}
    for megatron_prefix, renames in RELEASED_TOWERS:
        for m in resolve(cfg, naming):
            sources = tuple(_rename(h, renames) for h in m.hf)
            for source in sources:
                table[source] = (megatron_prefix + m.megatron, sources)
    for name in adaln_names(len(cfg.pattern)):
        table[name] = (ADALN_PREFIX + name, (name,))
    return table


@torch.no_grad()
def stream_into_model(
    model: torch.nn.Module,
    path: Path,
    files: dict[str, str],
    cfg: BackboneConfig,
    *,
    old_layout: bool = False,
) -> None:
    """Copy a released-layout folder into ``model`` (a ``TwoTowerModel`` at TP=1) shard by
    shard: each tensor is converted and copied into its parameter as soon as the tensors it is
    made of were read (q/k/v are fused), then dropped; nothing else of the folder is kept.
    Every parameter must be written exactly once, every tensor of the folder used."""
    naming = default_naming()
    table = released_table(cfg, naming)
    transforms = {m.megatron: m.transform for m in resolve(cfg, naming)}  # no tower prefix
    target = {k: v for k, v in model.state_dict().items() if not k.endswith("_extra_state")}
    pending: dict[str, dict[str, torch.Tensor]] = {}
    seen: set[str] = set()
    for name, tensor in released_tensors(path, files, old_layout=old_layout):
        seen.add(name)
        if name not in table:
            raise ConversionError(
                f"tensor {name!r} in {listing(path)} has no counterpart in a two-tower model of "
                f"pattern {cfg.pattern!r}"
            )
        megatron, sources = table[name]
        group = pending.setdefault(megatron, {})
        group[name] = tensor
        if len(group) < len(sources):
            continue
        del pending[megatron]
        inputs = [group[source] for source in sources]
        if megatron.startswith(ADALN_PREFIX):
            value = inputs[0]
        else:
            local = megatron.split(".backbone.", 1)[1]
            value = TRANSFORMS[transforms[local]].to_megatron(*inputs, cfg)
        if megatron not in target:
            raise ConversionError(f"the model built from the config has no tensor {megatron!r}")
        if tuple(value.shape) != tuple(target[megatron].shape):
            raise ConversionError(
                f"tensor {sources[0]!r} has shape {tuple(inputs[0].shape)}, which does not fit "
                f"the model built from the config ({megatron!r}: {tuple(target[megatron].shape)})"
            )
        target[megatron].copy_(value)
    missing = sorted(set(table) - seen)
    if missing:
        raise ConversionError(f"tensor {missing[0]!r} is missing from {listing(path)}")
    unfilled = sorted(set(target) - {megatron for megatron, _ in table.values()})
    if unfilled:
        raise ConversionError(f"no released tensor provides the model's {unfilled[0]!r}")
