"""Which kernels this process uses — the one place that probes optional GPU packages.

Transformer Engine, ``mamba_ssm`` and ``causal_conv1d`` are optional GPU extras
(``pip install twotower-train[gpu]``). They are detected here, once, and every other module asks
these functions instead of importing them speculatively. ``TWOTOWER_BACKEND=local`` forces the
non-TE path on a GPU host (handy for parity checks); ``TWOTOWER_BACKEND=te`` insists on TE.
"""

from __future__ import annotations

import functools
import importlib
import os

import torch

_BACKEND_ENV = "TWOTOWER_BACKEND"


@functools.cache
def cuda_available() -> bool:
    return torch.cuda.is_available()


def _importable(module: str) -> bool:
    # Only meaningful with CUDA: on a CPU machine TE's PyPI meta-package raises RuntimeError (not
    # ImportError) on import, and mamba_ssm / causal_conv1d do not build.
    if not cuda_available():
        return False
    try:
        importlib.import_module(module)
    except (ImportError, RuntimeError, OSError):
        return False
    return True


@functools.cache
def have_transformer_engine() -> bool:
    return _importable("transformer_engine.pytorch")


@functools.cache
def have_mamba_kernels() -> bool:
    """mamba_ssm's Triton SSD kernels and causal_conv1d are both usable."""
    return _importable("mamba_ssm.ops.triton.ssd_combined") and _importable("causal_conv1d")


def use_transformer_engine() -> bool:
    choice = os.environ.get(_BACKEND_ENV, "auto").lower()
    if choice not in {"auto", "local", "te"}:
        raise ValueError(f"{_BACKEND_ENV}={choice!r}; use one of auto, local, te")
    if choice == "te" and not have_transformer_engine():
        raise RuntimeError(
            f"{_BACKEND_ENV}=te but Transformer Engine is not importable here; install "
            "twotower-train[gpu] on a CUDA host or set TWOTOWER_BACKEND=local"
        )
    if choice == "local":
        return False
    return have_transformer_engine()


def missing_gpu_extras() -> list[str]:
    """On a CUDA host, the GPU extras this process runs without (Megatron falls back to slower
    local kernels); empty on a CPU machine, where none of them can be used anyway."""
    if not cuda_available():
        return []
    extras = {
        "transformer-engine": have_transformer_engine(),
        "mamba-ssm + causal-conv1d": have_mamba_kernels(),
        "apex (built from source)": _importable("apex.optimizers"),
    }
    return [name for name, present in extras.items() if not present]
