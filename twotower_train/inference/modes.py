"""The generation modes by name, with their knobs checked — one table for every front end
(``twotower-generate``, the lm-eval adapter, ``benchmarks/generation.py``).

    from twotower_train.inference.modes import build_config, generate
    config = build_config("mask_diffusion", max_new_tokens=32, confidence_threshold=0.9)
    out = generate(model, prompts, "mask_diffusion", config)

A knob is a field of the mode's config dataclass (``block_size``, ``steps_per_block``,
``confidence_threshold``, ``mask_token_id``, ``eos_token_id``, …) or one of
the token-choice knobs ``temperature``, ``top_k``, ``top_p``. An unknown mode, a knob the mode does
not take, or a value out of range is a :class:`~twotower_train.errors.UserError` naming it.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable
from typing import Any

import torch

from twotower_train.decoding.samplers import (
    ARConfig,
    DecodeConfig,
    Generation,
    MaskDiffusionConfig,
    MockARConfig,
    OnCommit,
    generate_ar,
    generate_mask_diffusion,
    generate_mock_ar,
)
from twotower_train.decoding.sampling import TokenChoice
from twotower_train.decoding.speculative import SpeculativeConfig, generate_speculative
from twotower_train.errors import UserError

MODES: dict[str, tuple[Callable[..., Generation], type[DecodeConfig]]] = {
    "mask_diffusion": (generate_mask_diffusion, MaskDiffusionConfig),
    "mock_ar": (generate_mock_ar, MockARConfig),
    "ar": (generate_ar, ARConfig),
    "speculative": (generate_speculative, SpeculativeConfig),
}
CHOICE_KNOBS = ("temperature", "top_k", "top_p")
MODEL_KNOBS = ("mask_token_id", "eos_token_id", "pad_token_id")
"""Knobs the loaded model supplies (:meth:`LoadedModel.sampler_ids`), not the user."""


class SamplerError(UserError, ValueError):
    """A bad generation mode or knob."""


def knobs(mode: str) -> list[str]:
    """The knobs ``mode`` takes."""
    _, config_type = _mode(mode)
    fields = [f.name for f in dataclasses.fields(config_type) if f.name != "choice"]
    return fields + list(CHOICE_KNOBS)


def _scalar_fields(config_type: type) -> dict[str, type]:
    """A config dataclass's fields → their scalar type (``int | None`` → ``int``)."""
    hints = typing.get_type_hints(config_type)
    out = {}
    for f in dataclasses.fields(config_type):
        kind = hints[f.name]
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        out[f.name] = args[0] if args else kind
    return out


def user_knobs() -> dict[str, type]:
    """Every knob a user sets, over all modes, name → type (the model's ids excluded): the
    command line's option list."""
    found: dict[str, type] = {}
    for _, config_type in MODES.values():
        for name, kind in _scalar_fields(config_type).items():
            if name not in ("choice", "compile", *MODEL_KNOBS):  # --compile is a switch
                found.setdefault(name, kind)
    return {**found, **_scalar_fields(TokenChoice)}


def trained_defaults(mode: str, block_size: int) -> dict[str, int]:
    """Knob defaults that follow the model rather than the mode: mask diffusion decodes blocks
    of the block size S the model was trained at (``LoadedModel.block_size``), S steps each."""
    if mode == "mask_diffusion":
        return {"block_size": block_size, "steps_per_block": block_size}
    return {}


def _mode(mode: str):
    if mode not in MODES:
        raise SamplerError(f"unknown generation mode {mode!r}; choose one of {', '.join(MODES)}")
    return MODES[mode]


def build_config(mode: str, **values: Any) -> DecodeConfig:
    """``mode``'s config from knob values (``None`` values are left at their defaults)."""
    _, config_type = _mode(mode)
    values = {k: v for k, v in values.items() if v is not None}
    unknown = sorted(set(values) - set(knobs(mode)))
    if unknown:
        raise SamplerError(
            f"{', '.join(unknown)} not a knob of mode {mode!r}; it takes {', '.join(knobs(mode))}"
        )
    choice = {k: values.pop(k) for k in CHOICE_KNOBS if k in values}
    try:
        return config_type(choice=TokenChoice(**choice), **values)
    except (TypeError, ValueError) as error:  # the dataclasses' own range checks
        raise SamplerError(f"mode {mode!r}: {error}") from None


def sampling_device(model, mode: str) -> torch.device:
    """Where ``mode`` draws its tokens on ``model`` — the device a ``torch.Generator`` for it
    must live on: the denoiser's, except for AR (and a shifted denoiser's mock-AR, which is AR
    decoding) on the context tower's."""
    _mode(mode)
    if mode == "ar" or (mode == "mock_ar" and getattr(model, "denoiser_shift", False)):
        return torch.device(model.context_device)
    return torch.device(model.denoiser_device)


def generate(
    model,
    prompts: list[list[int]],
    mode: str,
    config: DecodeConfig,
    generator: torch.Generator | None = None,
    on_commit: OnCommit | None = None,
) -> Generation:
    """Run ``mode`` with ``config`` (from :func:`build_config`). A model loaded context-only
    (its denoiser on the ``meta`` device, ``load_for_decoding(context_only=True)``) runs AR
    only."""
    function, _ = _mode(mode)
    if mode != "ar" and torch.device(model.denoiser_device).type == "meta":
        raise SamplerError(
            f"mode {mode!r} needs the denoiser, and this model was loaded context-only; use "
            "mode 'ar' or load it without context_only"
        )
    return function(model, prompts, config, generator=generator, on_commit=on_commit)
