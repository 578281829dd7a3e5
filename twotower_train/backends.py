"""Which kernels this process uses — the one place that probes optional GPU packages and picks.

Transformer Engine, ``mamba_ssm`` and ``causal_conv1d`` are optional GPU extras
(``pip install twotower-train[gpu]``). They are detected here, once, and every other module asks
these functions instead of importing them speculatively. Without the Mamba kernels (CPU, or a
GPU host without the extra) :func:`install_mamba_fallback` gives Megatron's ``MambaMixer`` the
pure-PyTorch SSD ops of :mod:`twotower_train.ops`. ``TWOTOWER_BACKEND=local`` forces the
non-TE path on a GPU host (handy for parity checks); ``TWOTOWER_BACKEND=te`` insists on TE.

Mamba-2 in the two towers (:func:`mamba_scan`, :func:`mamba_conv`): on CUDA the Triton/CUDA
kernels of :mod:`twotower_train.ops.mamba_kernels` — megatron-core's forward-only varlen scan and
conv where no gradient is needed (context tower, sampling), mamba_ssm's differentiable scan and
causal_conv1d's conv where one is (the denoiser in training) — and the pure-torch ops of
:mod:`twotower_train.ops` everywhere else (the CPU path and the reference).
``TWOTOWER_MAMBA_KERNELS=torch`` forces the pure-torch ops on a GPU host. On a CPU the kernels
run only under the Triton interpreter, switched on explicitly by
:func:`twotower_train.cpu_compat.enable_triton_interpreter` (the kernel parity tests).

The denoiser's training attention (:func:`resolve_backend`): compiled block-sparse
FlexAttention on CUDA, the dense-mask SDPA reference elsewhere; tests force one for code that
passes ``AUTO`` with :func:`forced_backend`. The loss's cross-entropy
(:func:`vocab_parallel_cross_entropy`): Megatron's fused kernel for bf16 logits.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
from collections.abc import Callable, Iterator

import torch

from twotower_train import cpu_compat
from twotower_train.ops.block_attention import AttentionBackend

_BACKEND_ENV = "TWOTOWER_BACKEND"
_MAMBA_ENV = "TWOTOWER_MAMBA_KERNELS"


@functools.cache
def cuda_available() -> bool:
    return torch.cuda.is_available()


@functools.cache
def _loads(module: str) -> bool:
    try:
        importlib.import_module(module)
    except (ImportError, RuntimeError, OSError):
        return False
    return True


def _importable(module: str) -> bool:
    # Only meaningful with CUDA: on a CPU machine TE's PyPI meta-package raises RuntimeError (not
    # ImportError) on import, and causal_conv1d does not build.
    return cuda_available() and _loads(module)


@functools.cache
def have_transformer_engine() -> bool:
    return _importable("transformer_engine.pytorch")


def _triton_kernel_loads(module: str) -> bool:
    # Triton kernels run on CUDA, or on the CPU under the Triton interpreter once the test-only
    # stand-ins are installed (importing mamba_ssm needs one of them).
    return (cuda_available() or cpu_compat.triton_interpreter_active()) and _loads(module)


def have_mamba_ssm() -> bool:
    """mamba_ssm's differentiable Triton SSD scan is usable."""
    return _triton_kernel_loads("mamba_ssm.ops.triton.ssd_combined")


def have_causal_conv1d() -> bool:
    """Dao-AILab's causal_conv1d CUDA kernels are usable (CUDA only: no interpreter for them)."""
    return _importable("causal_conv1d")


def have_mamba_kernels() -> bool:
    """What Megatron's ``MambaMixer`` runs natively: mamba_ssm's SSD kernels and causal_conv1d
    (so CUDA only)."""
    return have_causal_conv1d() and have_mamba_ssm()


def have_megatron_mamba_kernels() -> bool:
    """megatron-core's forward-only Triton varlen SSD scan and conv are usable."""
    return _triton_kernel_loads("megatron.core.ssm.ops.ssd_combined") and _triton_kernel_loads(
        "megatron.core.ssm.ops.causal_conv1d_varlen"
    )


def _mamba_kernels_wanted(device: torch.device) -> bool:
    choice = os.environ.get(_MAMBA_ENV, "auto").lower()
    if choice not in {"auto", "torch"}:
        raise ValueError(f"{_MAMBA_ENV}={choice!r}; use one of auto, torch")
    if choice == "torch":
        return False
    return device.type == "cuda" or (
        device.type == "cpu" and cpu_compat.triton_interpreter_active()
    )


def mamba_scan(device: torch.device, *, needs_grad: bool, state_stride: int | None) -> Callable:
    """The SSD scan for one mixer call, with :func:`twotower_train.ops.ssd.ssd_scan`'s
    signature: forward-only varlen kernel without grad (it also gives block-boundary states),
    mamba_ssm's differentiable one with grad, else the pure-torch scan."""
    from twotower_train.ops import mamba_kernels, ssd

    if _mamba_kernels_wanted(device):
        if not needs_grad and have_megatron_mamba_kernels():
            return mamba_kernels.ssd_scan_varlen
        if needs_grad and state_stride is None and have_mamba_ssm():
            return mamba_kernels.ssd_scan_differentiable
    return ssd.ssd_scan


def mamba_conv(device: torch.device, *, needs_grad: bool) -> Callable:
    """The depthwise causal conv for one mixer call, with
    :func:`twotower_train.ops.conv.causal_conv1d`'s signature: causal_conv1d's CUDA kernel where
    installed, else megatron's forward-only Triton conv without grad, else pure torch (cuDNN's
    depthwise conv on a GPU)."""
    from twotower_train.ops import conv, mamba_kernels

    if _mamba_kernels_wanted(device):
        if have_causal_conv1d():
            return mamba_kernels.causal_conv1d_cuda
        if not needs_grad and have_megatron_mamba_kernels():
            return mamba_kernels.causal_conv1d_varlen
    return conv.causal_conv1d


def vocab_parallel_cross_entropy(logits_dtype: torch.dtype) -> Callable:
    """Per-token NLL of vocab-parallel logits (..., V/TP) against targets (...): Megatron's fused
    cross-entropy for bf16 logits (it reads them in bf16, computes in fp32 and returns bf16
    gradients, so it is only exact for bf16 training), Megatron's unfused one otherwise."""
    from megatron.core import parallel_state, tensor_parallel

    if logits_dtype == torch.bfloat16:
        from megatron.core.fusions.fused_cross_entropy import fused_vocab_parallel_cross_entropy

        group = parallel_state.get_tensor_model_parallel_group()
        return lambda logits, target: fused_vocab_parallel_cross_entropy(logits, target, group)
    return lambda logits, target: tensor_parallel.vocab_parallel_cross_entropy(
        logits.float(), target
    )


def use_flex_attention(device: torch.device) -> bool:
    """Compiled block-sparse FlexAttention for the denoiser's training attention (forward and
    backward, O(L·S) memory) on CUDA; the dense-mask SDPA reference elsewhere (torch has no CPU
    FlexAttention backward)."""
    return device.type == "cuda"


_forced: AttentionBackend | None = None


@contextlib.contextmanager
def forced_backend(backend: AttentionBackend) -> Iterator[None]:
    """Within the block, ``AUTO`` resolves to ``backend`` (for tests and debugging)."""
    global _forced
    if not isinstance(backend, AttentionBackend):
        raise TypeError(f"backend must be an AttentionBackend, got {backend!r}")
    previous, _forced = _forced, backend
    try:
        yield
    finally:
        _forced = previous


def resolve_backend(backend: AttentionBackend, device: torch.device) -> AttentionBackend:
    """Turn ``AUTO`` into a concrete backend for ``device``; explicit choices pass through."""
    if not isinstance(backend, AttentionBackend):
        raise TypeError(f"backend must be an AttentionBackend, got {backend!r}")
    if backend is not AttentionBackend.AUTO:
        return backend
    if _forced is not None and _forced is not AttentionBackend.AUTO:
        return _forced
    return AttentionBackend.FLEX if use_flex_attention(device) else AttentionBackend.DENSE


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


def install_mamba_fallback() -> bool:
    """Give Megatron's ``MambaMixer`` the pure-PyTorch SSD ops and gated RMSNorm when
    mamba_ssm's kernels are not usable here (it refuses to build without them). Returns whether
    it did; the package ``__init__`` calls it once."""
    if have_mamba_kernels():
        return False
    from megatron.core.ssm import mamba_mixer

    from twotower_train.ops import mamba_ssm_compat
    from twotower_train.ops.gated_norm import GatedRMSNorm

    mamba_mixer.HAVE_MAMBA_SSM = True
    mamba_mixer.RMSNormGated = GatedRMSNorm
    mamba_mixer.ExtendedRMSNorm = GatedRMSNorm
    mamba_mixer.mamba_chunk_scan_combined = mamba_ssm_compat.mamba_chunk_scan_combined
    mamba_mixer.mamba_split_conv1d_scan_combined = mamba_ssm_compat.mamba_split_conv1d_scan_combined
    return True


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
