"""Megatron ``TwoTowerModel`` ↔ the self-contained Hugging Face two-tower folder.

The folder loads offline with ``AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)``:

* ``config.json`` — :class:`NemotronTwoTowerConfig` (the backbone's ``nemotron_h`` fields, the
  default block size, ``mask_token_id``, ``auto_map``);
* ``generation_config.json``, the tokenizer files;
* safetensors shards + ``model.safetensors.index.json`` with both towers and the adaLN, named as
  the export's modules hold them (no transformers name conversion applies to remote code);
* the modeling code (the template files in ``hf_export/``) and verbatim copies of the torch-only decoding modules
  :data:`twotower_train.decoding.PORTABLE_MODULES` — the samplers the modeling code calls, so the
  export decodes exactly like Megatron.

Names: the backbone table of :mod:`~twotower_train.convert.hf_names` per tower plus its prefix
rules (``TOWER_PREFIXES``, ``ADALN_PREFIX``): the context tower as transformers names a
``NemotronHForCausalLM`` (``model.…``, ``lm_head.weight``, stacked experts), the denoiser under
``denoiser.`` and adaLN-single under the released names (``t_embedder.*``, ``t_block.*``,
``scale_shift_tables.*``). Exports of the pre-release adaLN formulation are refused. All functions here take and return whole (TP=1)
tensors; loading a checkpoint saved at another TP/EP into TP=1 is dist_checkpointing's job.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from twotower_train.convert.hf_export import MODELING_FILES, TEMPLATE_DIR
from twotower_train.convert.hf_export.configuration_nemotron_twotower import (
    NemotronTwoTowerConfig,
)
from twotower_train.convert.hf_files import (
    DEFAULT_SHARD_BYTES,
    ConversionError,
    atomic_folder,
    listing,
    read_tensors,
    tensor_files,
    write_shards,
)
from twotower_train.convert.hf_names import (
    ADALN_PREFIX,
    OLD_ADALN_TENSOR,
    TOWER_PREFIXES,
    adaln_names,
    module_layout,
    resolve,
)
from twotower_train.convert.nemotron_h import (
    backbone_config_from_hf,
    generation_config,
    hf_config_values,
    hf_to_megatron_state,
    megatron_to_hf_state,
    read_hf_config,
)
from twotower_train.model.config import BackboneConfig

ARCHITECTURE = "NemotronTwoTowerForCausalLM"
AUTO_MAP = {
    "AutoConfig": "configuration_nemotron_twotower.NemotronTwoTowerConfig",
    "AutoModel": f"modeling_nemotron_twotower.{ARCHITECTURE}",
    "AutoModelForCausalLM": f"modeling_nemotron_twotower.{ARCHITECTURE}",
}


def code_files() -> list[Path]:
    """The Python files every export folder ships: the modeling template, then the portable
    decoding modules (whatever :data:`~twotower_train.decoding.PORTABLE_MODULES` lists)."""
    from twotower_train import decoding

    portable = Path(decoding.__file__).parent
    files = [TEMPLATE_DIR / name for name in MODELING_FILES]
    files += [portable / f"{module}.py" for module in decoding.PORTABLE_MODULES]
    for file in files:
        if not file.is_file():
            raise FileNotFoundError(f"export code file {file} is missing from the package")
    return files


def twotower_config(
    cfg: BackboneConfig, *, block_size: int, dtype: torch.dtype
) -> NemotronTwoTowerConfig:
    """The export's ``config.json``: the backbone's ``nemotron_h`` fields + the two-tower ones."""
    values = hf_config_values(
        cfg, dtype=str(dtype).removeprefix("torch."), architectures=[ARCHITECTURE]
    )
    return NemotronTwoTowerConfig(
        **values,
        block_size=block_size,
        denoiser_shift=cfg.denoiser_shift,
        auto_map=AUTO_MAP,
    )


# ---- state dicts ------------------------------------------------------------------------------


def _rename(name: str, renames: dict[str, str]) -> str:
    old = next(prefix for prefix in renames if name.startswith(prefix))
    return renames[old] + name[len(old) :]


def _export_prefixes() -> list[tuple[str, str, str]]:
    """(export prefix, Megatron tower prefix, module-name prefix), longest export prefix first."""
    rules = [
        (export, tower, module)
        for tower, renames in TOWER_PREFIXES
        for module, export in renames.items()
    ]
    return sorted(rules, key=lambda rule: -len(rule[0]))


def megatron_to_export_state(
    state: dict[str, torch.Tensor], cfg: BackboneConfig
) -> dict[str, torch.Tensor]:
    """``TwoTowerModel`` state (TE or local names; ``_extra_state`` ignored) → export tensors."""
    if ADALN_PREFIX + "tables" in state:
        raise ConversionError(
            "the checkpoint holds the pre-release adaLN-single (denoiser.adaln.tables); this "
            "version trains and exports only the released formulation — retrain stage 2"
        )
    state = {k: v for k, v in state.items() if not k.endswith("_extra_state")}
    out, used = {}, set()
    for megatron_prefix, renames in TOWER_PREFIXES:
        tower = {
            k[len(megatron_prefix) :]: v for k, v in state.items() if k.startswith(megatron_prefix)
        }
        used.update(megatron_prefix + k for k in tower)
        try:
            modules = module_layout(megatron_to_hf_state(tower, cfg), cfg)
        except ConversionError as error:
            raise ConversionError(f"{megatron_prefix}*: {error}") from None
        out.update({_rename(k, renames): v for k, v in modules.items()})
    for name in adaln_names(len(cfg.pattern)):
        if ADALN_PREFIX + name not in state:
            raise ConversionError(f"Megatron tensor {ADALN_PREFIX + name!r} is missing")
        out[name] = state[ADALN_PREFIX + name]
        used.add(ADALN_PREFIX + name)
    leftovers = sorted(set(state) - used)
    if leftovers:
        raise ConversionError(
            f"{len(leftovers)} Megatron tensor(s) have no export counterpart: "
            f"{', '.join(leftovers[:5])}"
        )
    return out


def export_names(cfg: BackboneConfig) -> set[str]:
    """Every tensor name of the export of a model described by ``cfg``."""
    backbone = dict.fromkeys((n for m in resolve(cfg) for n in m.hf), torch.empty(0))
    modules = set(module_layout(backbone, cfg))
    out = {_rename(n, renames) for _, renames in TOWER_PREFIXES for n in modules}
    return out | set(adaln_names(len(cfg.pattern)))


def export_to_megatron_state(
    state: dict[str, torch.Tensor], cfg: BackboneConfig, *, naming: str | None = None
) -> dict[str, torch.Tensor]:
    """Export tensors → ``TwoTowerModel`` state in ``naming`` (default: what this process
    builds). Inverse of :func:`megatron_to_export_state`."""
    adaln = set(adaln_names(len(cfg.pattern)))
    rules = _export_prefixes()
    towers: dict[str, dict[str, torch.Tensor]] = {tower: {} for tower, _ in TOWER_PREFIXES}
    out = {}
    for name, tensor in state.items():
        if name in adaln:
            out[ADALN_PREFIX + name] = tensor
            continue
        rule = next((r for r in rules if name.startswith(r[0])), None)
        if rule is None:
            raise ConversionError(f"export tensor {name!r} belongs to neither tower nor the adaLN")
        export, tower, module = rule
        towers[tower][module + name[len(export) :]] = tensor
    for megatron_prefix, tower in towers.items():
        try:
            converted = hf_to_megatron_state(tower, cfg, naming=naming)
        except ConversionError as error:
            raise ConversionError(f"{megatron_prefix}*: {error}") from None
        out.update({megatron_prefix + k: v for k, v in converted.items()})
    return out


# ---- folders -----------------------------------------------------------------------------------


def save_twotower_folder(
    cfg: BackboneConfig,
    state: dict[str, torch.Tensor],
    path: str | os.PathLike,
    *,
    block_size: int,
    tokenizer=None,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
    overwrite: bool = False,
) -> Path:
    """Write a ``TwoTowerModel`` state (TP=1) as the two-tower export folder (module docstring),
    atomically; ``tokenizer`` (a loaded HF tokenizer) is saved into it."""
    path = Path(path)
    tensors = megatron_to_export_state(state, cfg)
    config = twotower_config(cfg, block_size=block_size, dtype=next(iter(tensors.values())).dtype)
    with atomic_folder(path, overwrite=overwrite) as tmp:
        config.save_pretrained(tmp)
        generation_config(cfg).save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        for file in code_files():
            shutil.copyfile(file, tmp / file.name)
        write_shards(tensors, tmp, max_shard_bytes)
    return path


def load_twotower_folder(
    path: str | os.PathLike, *, naming: str | None = None
) -> tuple[BackboneConfig, dict[str, torch.Tensor], NemotronTwoTowerConfig]:
    """An export folder → (backbone config, ``TwoTowerModel`` state, the export's config)."""
    path = Path(path)
    config = read_hf_config(
        path,
        NemotronTwoTowerConfig,
        ARCHITECTURE,
        hint="a single-tower nemotron_h folder is read by `twotower-convert import-hf`",
    )
    cfg = backbone_config_from_hf(config, denoiser_shift=bool(config.denoiser_shift))
    files = tensor_files(path)
    if OLD_ADALN_TENSOR in files:
        raise ConversionError(
            f"{path} was exported with the pre-release adaLN-single ({OLD_ADALN_TENSOR}); this "
            "version reads only the released formulation (t_embedder / t_block / "
            "scale_shift_tables) — retrain stage 2 from its backbone"
        )
    expected = export_names(cfg)
    missing = sorted(expected - set(files))
    if missing:
        raise ConversionError(f"tensor {missing[0]!r} is missing from {listing(path)}")
    unexpected = sorted(set(files) - expected)
    if unexpected:
        raise ConversionError(
            f"{len(unexpected)} tensor(s) in {listing(path)} have no counterpart in a two-tower "
            f"model of pattern {cfg.pattern!r}: {', '.join(unexpected[:5])}"
        )
    tensors = read_tensors(path, files, files)
    return cfg, export_to_megatron_state(tensors, cfg, naming=naming), config
