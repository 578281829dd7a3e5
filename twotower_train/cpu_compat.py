"""Megatron-Core on a machine without CUDA — every CPU adaptation lives in this one module.

Megatron-Core 0.19 assumes CUDA at a handful of call sites even when the model itself runs
fine on the CPU. :func:`apply` installs CPU stand-ins for exactly those sites, and **does
nothing when CUDA is available**:
GPU hosts run Megatron unmodified with the real kernels (Transformer Engine, mamba_ssm,
causal_conv1d).

What is adapted, and why:

1. ``torch.cuda.current_device()`` is used as a *device* argument all over Megatron
   (parameter init, the local attention's memory buffer). Without CUDA it answers ``"cpu"``;
   ``torch.cuda.synchronize()`` (the checkpoint writer's pre-copy fence) has nothing to wait
   for and returns; ``torch.cuda.current_stream()`` (Megatron DDP's bucket sync waits on it)
   is a stream whose waits return at once — CPU work is already ordered.
2. Megatron's RNG tracker stores and swaps CUDA generator states. Here it tracks the CPU
   generator instead, keeping Megatron's seeding scheme (data-parallel / tensor-parallel /
   expert-parallel streams) and fork semantics.
3. The local attention builds its default causal mask with ``device="cuda"``.
4. The alltoall MoE token dispatcher creates CUDA streams for its device-to-host copies.
   Recipes that ask for it (the Nano recipe does) get Megatron's allgather dispatcher, which
   routes every token to the same experts with the same weights; only the communication
   pattern differs.
5. ``MambaMixer`` refuses to build without mamba_ssm and calls its Triton kernels: the mixer
   gets the pure-PyTorch SSD path (:mod:`twotower_train.ops`) and gated RMSNorm instead.

Importing :mod:`twotower_train` calls :func:`install`: it applies the stand-ins the moment
Megatron-Core is imported (at once if it already is), so ``import twotower_train`` alone stays
free of torch and Megatron — command-line help and recipe errors print in about a second.
:func:`applied` reports whether they are in place.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import sys

_APPLIED = False


def applied() -> bool:
    return _APPLIED


def _cpu_device(*_args, **_kwargs) -> str:
    return "cpu"


def _nothing_to_synchronize(*_args, **_kwargs) -> None:
    return None


class _CpuStream:
    """What Megatron asks of ``torch.cuda.current_stream()``: waits, which on a CPU are done."""

    def wait_event(self, _event) -> None:
        return None

    def wait_stream(self, _stream) -> None:
        return None


def _current_stream(*_args, **_kwargs) -> _CpuStream:
    return _CpuStream()


def _patch_rng_tracker() -> None:
    import torch
    from megatron.core.tensor_parallel import random as mrandom

    class CpuRNGStatesTracker(mrandom.CudaRNGStatesTracker):
        """Megatron's named RNG streams over the CPU generator."""

        def add(self, name, seed):
            self._is_initialized = True
            if seed in self.seeds_:
                raise Exception(f"seed {seed} already exists")
            if name in self.states_:
                raise Exception(f"rng state {name} already exists")
            self.seeds_.add(seed)
            original = torch.get_rng_state()
            torch.manual_seed(seed)
            self.states_[name] = torch.get_rng_state()
            torch.set_rng_state(original)

        @contextlib.contextmanager
        def fork(self, name=mrandom._MODEL_PARALLEL_RNG_TRACKER_NAME):
            if name not in self.states_:
                raise Exception(f"rng state {name} is not added")
            original = torch.get_rng_state()
            torch.set_rng_state(self.states_[name])
            try:
                yield
            finally:
                self.states_[name] = torch.get_rng_state()
                torch.set_rng_state(original)

    def get_state(*_args, clone: bool = False, **_kwargs):
        return torch.get_rng_state()

    def set_state(new_state, *_args, **_kwargs):
        torch.set_rng_state(new_state)

    mrandom.CudaRNGStatesTracker = CpuRNGStatesTracker
    mrandom._get_cuda_rng_state = get_state
    mrandom._set_cuda_rng_state = set_state
    mrandom.initialize_rng_tracker(force_reset=True)


def _patch_causal_mask() -> None:
    import torch
    from megatron.core.fusions import fused_softmax
    from megatron.core.transformer import utils as tutils

    def get_default_causal_mask(sq: int) -> torch.Tensor:
        return torch.triu(torch.ones(sq, sq, dtype=torch.bool), diagonal=1)

    # fused_softmax imported the function by name, so both references are replaced.
    tutils.get_default_causal_mask = get_default_causal_mask
    fused_softmax.get_default_causal_mask = get_default_causal_mask


def _patch_moe_dispatcher() -> None:
    from megatron.core.transformer.moe import moe_layer

    moe_layer.MoEAlltoAllTokenDispatcher = moe_layer.MoEAllGatherTokenDispatcher


def _patch_mamba_mixer() -> None:
    from megatron.core.ssm import mamba_mixer

    from twotower_train.ops import mamba_ssm_compat
    from twotower_train.ops.gated_norm import GatedRMSNorm

    mamba_mixer.HAVE_MAMBA_SSM = True
    mamba_mixer.RMSNormGated = GatedRMSNorm
    mamba_mixer.ExtendedRMSNorm = GatedRMSNorm
    mamba_mixer.mamba_chunk_scan_combined = mamba_ssm_compat.mamba_chunk_scan_combined
    mamba_mixer.mamba_split_conv1d_scan_combined = (
        mamba_ssm_compat.mamba_split_conv1d_scan_combined
    )


def apply() -> None:
    """Install the CPU stand-ins once; a no-op when CUDA is available."""
    global _APPLIED
    import torch

    if _APPLIED or torch.cuda.is_available():
        return
    torch.cuda.current_device = _cpu_device
    torch.cuda.synchronize = _nothing_to_synchronize
    torch.cuda.current_stream = _current_stream
    _patch_rng_tracker()
    _patch_causal_mask()
    _patch_moe_dispatcher()
    _patch_mamba_mixer()
    _APPLIED = True


class _ApplyAfterMegatronImport(importlib.abc.MetaPathFinder):
    """Finds ``megatron.core`` like the normal path finder does, and calls :func:`apply` right
    after the module has executed (a standard import hook: the patches need Megatron's modules,
    and importing Megatron eagerly would cost every command several seconds)."""

    def find_spec(self, name, path, target=None):
        if name != "megatron.core":
            return None
        sys.meta_path.remove(self)  # once; also keeps the lookup below from recursing
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        execute = spec.loader.exec_module

        def exec_module(module):
            execute(module)
            apply()

        spec.loader.exec_module = exec_module
        return spec


def install() -> None:
    """Apply the CPU stand-ins now if Megatron-Core is imported, else when it gets imported."""
    if "megatron.core" in sys.modules:
        apply()
    elif not any(isinstance(f, _ApplyAfterMegatronImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _ApplyAfterMegatronImport())
