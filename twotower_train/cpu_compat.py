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
5. The MoE router's ``gating`` moves CPU weights to ``torch.cuda.current_device()`` on every
   call — a no-op here (the answer is "cpu"), but TorchDynamo takes the stand-in for a torch
   op returning a non-tensor and breaks compiled decoding graphs at every router. Here gating
   is the same linear without the move.

(``MambaMixer`` without mamba_ssm is a kernel choice, not a CPU matter — GPU hosts without the
``[gpu]`` extra need it too — so it lives in :func:`twotower_train.backends.install_mamba_fallback`.)

Importing :mod:`twotower_train` installs :mod:`twotower_train.megatron_hook`, which calls
:func:`apply` the moment Megatron-Core is imported (at once if it already is), so
``import twotower_train`` alone stays free of torch and Megatron — command-line help and recipe
errors print in about a second. :func:`applied` reports whether they are in place. This module
imports nothing of the package (a leaf).

Separately, and only when called, :func:`enable_triton_interpreter` lets the GPU Triton kernels
(megatron-core's and mamba_ssm's Mamba-2 scans) run on CPU tensors under ``TRITON_INTERPRET=1``,
so their parity with the pure-torch ops is checked in CPU CI. Nothing else calls it: training and sampling on a CPU keep
the pure-torch ops.
"""

from __future__ import annotations

import contextlib
import os
import sys
import types

_APPLIED = False
_TRITON_INTERPRETER = False


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


def _patch_router_gating() -> None:
    import torch
    from megatron.core.transformer.moe.router import Router, router_gating_linear

    def gating(self, input):  # Router.gating minus the weight move (item 5)
        dtype = {"fp32": torch.float32, "fp64": torch.float64}.get(
            self.config.moe_router_dtype, input.dtype
        )
        return router_gating_linear(input, self.weight, self.bias, dtype)

    Router.gating = gating


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
    _patch_router_gating()
    _APPLIED = True


def triton_interpreter_active() -> bool:
    """Whether :func:`enable_triton_interpreter` has switched the CPU kernel path on."""
    return _TRITON_INTERPRETER


def _interpreted(kernel) -> bool:
    from triton.runtime.interpreter import InterpretedFunction

    while not isinstance(kernel, InterpretedFunction) and hasattr(kernel, "fn"):
        kernel = kernel.fn  # through autotune / heuristics wrappers
    return isinstance(kernel, InterpretedFunction)


def _tile_size(config) -> float:
    size = 1.0
    for key, value in config.kwargs.items():
        if key.startswith("BLOCK") and isinstance(value, int):
            size *= value
    return size


def enable_triton_interpreter(tiles: str = "smallest") -> None:
    """Run the Mamba Triton kernels on the CPU under the Triton interpreter (tests only).

    ``TRITON_INTERPRET=1`` must be in the environment before the process imports triton (it is
    read when kernels are decorated). Then
    the CPU stand-ins the kernels need are installed, and :mod:`twotower_train.backends` picks
    the kernels for CPU tensors:

    1. ``torch.cuda.device(index)``, the context the kernels launch in → a null context;
    2. ``torch.cuda.get_device_properties`` (mamba_ssm's backward sizes a grid by the SM
       count) → an object with a small ``multi_processor_count``;
    3. triton's autotuner times every config through the GPU driver → its per-config benchmark
       returns the config's tile size instead, so it takes the ``smallest`` tiles (every config
       computes the same result; on tiny shapes small tiles are what the interpreter runs
       fastest), or with ``tiles="largest"`` the largest: the interpreter pays per program, and
       at real sizes (the Nano's 64 heads × 64 × state 128) the smallest tiles' grids have
       thousands of programs per head, the largest ones' tens of times fewer;
    4. ``import mamba_ssm`` imports the Mamba-1 CUDA extension ``selective_scan_cuda``, which
       the SSD kernels never use → an empty module of that name.

    A no-op with CUDA, where the kernels run natively.
    """
    global _TRITON_INTERPRETER
    import torch

    if _TRITON_INTERPRETER or torch.cuda.is_available():
        return
    from megatron.core.ssm.ops import ssd_bmm
    from triton.runtime import autotuner

    if os.environ.get("TRITON_INTERPRET") != "1" or not _interpreted(ssd_bmm._bmm_chunk_fwd_kernel):
        raise RuntimeError(
            "enable_triton_interpreter needs TRITON_INTERPRET=1 in the environment before "
            "Python starts (triton reads it when the kernels are defined); run e.g. "
            "TRITON_INTERPRET=1 python -m tests.kernels.interpreter_parity"
        )
    torch.cuda.device = lambda _index=None: contextlib.nullcontext()
    torch.cuda.get_device_properties = lambda *_a, **_k: types.SimpleNamespace(
        name="cpu (triton interpreter)", multi_processor_count=2
    )
    if tiles not in ("smallest", "largest"):
        raise ValueError(f"tiles={tiles!r}; use 'smallest' or 'largest'")
    power = 1.0 if tiles == "smallest" else -1.0  # the "time" is the tile size or its inverse
    autotuner.Autotuner._bench = lambda self, *_a, config, **_k: [_tile_size(config) ** power] * 3
    sys.modules.setdefault("selective_scan_cuda", types.ModuleType("selective_scan_cuda"))
    _TRITON_INTERPRETER = True
