"""Megatron ``TwoTowerModel`` ↔ the Hugging Face two-tower folder, in the released layout.

The folder loads offline with ``AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)``:

* ``config.json`` — :class:`NemotronTwoTowerConfig`: the released one's fields
  (``architectures: ["NemotronHTwoTowerForCausalLM"]``, ``model_type: "nemotron_h"``, the
  backbone's ``nemotron_h`` fields, ``hybrid_override_pattern`` too) plus ``mask_token_id``, the
  default ``block_size``, ``denoiser_shift`` when set, and our ``auto_map``;
* ``generation_config.json``, the tokenizer files;
* safetensors shards + ``model.safetensors.index.json`` named as NVIDIA's released checkpoint
  (:mod:`~twotower_train.convert.released_layout`: ``context_tower.*``,
  ``context_lm_head.weight``, ``denoiser_tower.*``, ``lm_head.weight`` — the denoiser's head —,
  ``t_embedder.*``, ``t_block.*``, ``scale_shift_tables.*``, one tensor per expert), each tensor
  in the dtype it is given (a bf16 model's fp32 Mamba ``A_log`` / ``D`` stay fp32);
* the modeling code (the template files in ``hf_export/``) and verbatim copies of the torch-only
  decoding modules :data:`twotower_train.decoding.PORTABLE_MODULES` — the samplers the modeling
  code calls, so the export decodes exactly like Megatron.

Reading accepts that layout as NVIDIA ships it (no ``mask_token_id`` in config.json: 3, the
released code's default; no ``block_size``: 16) and our exports' former layout. Exports of the
pre-release adaLN formulation are refused. All functions here take and return whole (TP=1)
tensors; loading a checkpoint saved at another TP/EP into TP=1 is dist_checkpointing's job.
"""

from __future__ import annotations

import functools
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
    Pending,
    atomic_folder,
    listing,
    save_config,
    tensor_files,
    write_shards,
)
from twotower_train.convert.hf_names import ADALN_PREFIX, OLD_ADALN_TENSOR, TRANSFORMS, resolve
from twotower_train.convert.nemotron_h import (
    backbone_config_from_hf,
    generation_config,
    hf_config_values,
    read_hf_config,
)
from twotower_train.convert.released_layout import (
    from_old_layout,
    is_old_export_layout,
    megatron_to_released_state,
    released_table,
    released_tensors,
    released_to_megatron_state,
)
from twotower_train.model.config import BackboneConfig

ARCHITECTURE = "NemotronHTwoTowerForCausalLM"
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


def megatron_to_export_state(
    state: dict[str, torch.Tensor], cfg: BackboneConfig
) -> dict[str, torch.Tensor]:
    """``TwoTowerModel`` state (TE or local names; ``_extra_state`` ignored) → the released
    layout's tensors, each in its own dtype."""
    if ADALN_PREFIX + "tables" in state:
        raise ConversionError(
            "the checkpoint holds the pre-release adaLN-single (denoiser.adaln.tables); this "
            "version trains and exports only the released formulation — retrain stage 2"
        )
    return megatron_to_released_state(state, cfg)


def export_plan(state: dict[str, torch.Tensor], cfg: BackboneConfig) -> dict[str, Pending]:
    """What :func:`megatron_to_export_state` returns, in the same order, but made on demand:
    each released tensor is a :class:`~twotower_train.convert.hf_files.Pending` whose shape and
    dtype come from converting ``meta`` stand-ins (the whole state is checked that way, nothing
    allocated) and whose value is converted from ``state`` only when its shard is written."""
    meta = {k: v.to("meta") for k, v in state.items() if not k.endswith("_extra_state")}
    likes = megatron_to_export_state(meta, cfg)  # names, shapes, dtypes; raises what it raises
    naming = "te" if _has_te_names(meta, cfg) else "local"
    table = released_table(cfg, naming)
    transforms = {m.megatron: m.transform for m in resolve(cfg, naming)}  # no tower prefix
    producers: dict[str, functools.partial] = {}
    plan = {}
    for name, like in likes.items():
        megatron, sources = table[name]
        if megatron not in producers:
            transform = "copy"
            if not megatron.startswith(ADALN_PREFIX):
                transform = transforms[megatron.split(".backbone.", 1)[1]]
            convert = TRANSFORMS[transform].to_hf
            producers[megatron] = functools.partial(convert, state[megatron], cfg)
        plan[name] = Pending(like, producers[megatron], sources.index(name))
    return plan


def _has_te_names(state: dict[str, torch.Tensor], cfg: BackboneConfig) -> bool:
    """Whether ``state`` uses the TE spec's names (else the local spec's), as
    :func:`~twotower_train.convert.nemotron_h.megatron_to_hf_state` tells them apart."""
    prefix = "context_tower.backbone."
    return all(prefix + m.megatron in state for m in resolve(cfg, "te"))


def export_names(cfg: BackboneConfig) -> set[str]:
    """Every tensor name of the export (the released layout) of a model described by ``cfg``."""
    return set(released_table(cfg, "te"))


def export_to_megatron_state(
    state: dict[str, torch.Tensor], cfg: BackboneConfig, *, naming: str | None = None
) -> dict[str, torch.Tensor]:
    """Export tensors (released layout, or our former one) → ``TwoTowerModel`` state in
    ``naming`` (default: what this process builds). Inverse of :func:`megatron_to_export_state`."""
    if is_old_export_layout(state):
        state = dict(pair for item in state.items() for pair in from_old_layout(*item))
    return released_to_megatron_state(state, cfg, naming=naming)


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
    tensors = export_plan(state, cfg)  # converted shard by shard as the shards are written
    dtype = tensors["context_tower.embeddings.weight"].like.dtype  # of (nearly) everything
    config = twotower_config(cfg, block_size=block_size, dtype=dtype)
    with atomic_folder(path, overwrite=overwrite) as tmp:
        save_config(config, tmp, drop=() if cfg.denoiser_shift else ("denoiser_shift",))
        generation_config(cfg).save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        for file in code_files():
            shutil.copyfile(file, tmp / file.name)
        write_shards(tensors, tmp, max_shard_bytes)
    return path


def read_twotower_folder(
    path: str | os.PathLike,
) -> tuple[BackboneConfig, NemotronTwoTowerConfig, dict[str, str], bool]:
    """A two-tower folder's (backbone config, config, tensor name → shard, whether it is our
    former layout), its tensor names checked against the config (nothing read yet)."""
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
    old_layout = is_old_export_layout(files)
    present = set(files)
    if old_layout:  # the names it provides: a stand-in of each stacked-expert tensor's size
        stand_in = torch.empty(cfg.num_experts)
        present = {new for name in files for new, _ in from_old_layout(name, stand_in)}
    expected = export_names(cfg)
    missing = sorted(expected - set(present))
    if missing:
        raise ConversionError(f"tensor {missing[0]!r} is missing from {listing(path)}")
    unexpected = sorted(set(present) - expected)
    if unexpected:
        raise ConversionError(
            f"{len(unexpected)} tensor(s) in {listing(path)} have no counterpart in a two-tower "
            f"model of pattern {cfg.pattern!r}: {', '.join(unexpected[:5])}"
        )
    return cfg, config, files, old_layout


def load_twotower_folder(
    path: str | os.PathLike, *, naming: str | None = None
) -> tuple[BackboneConfig, dict[str, torch.Tensor], NemotronTwoTowerConfig]:
    """A two-tower folder → (backbone config, ``TwoTowerModel`` state, the folder's config)."""
    cfg, config, files, old_layout = read_twotower_folder(path)
    tensors = dict(released_tensors(Path(path), files, old_layout=old_layout))
    return cfg, released_to_megatron_state(tensors, cfg, naming=naming), config
