"""``DecodeConfig.compile``: the decoding forwards under ``torch.compile``.

:func:`compiled` gives a view of a :class:`~.interface.DecodingModel` whose ``advance`` (the AR
step, the block advance, the speculative verify) and ``denoise_block`` (every denoising step)
run compiled; ``prefill`` stays eager (it runs once per call, on prompt shapes that differ every
time). Both modes get the same treatment, so an AR / diffusion comparison stays fair. The view
is built once per model and reused by every later call, so a model compiles once.

Shapes are static: compiled decoding runs on a static cache (:class:`~.cache.ContextCache`,
made by the samplers when ``compile`` is set) whose buffers keep one shape for a whole
generation and whose length is a device tensor, so each kind of call — AR step, block advance,
verify, denoising step — is one graph for every position, and a GPU replays it as a CUDA graph
(``mode="reduce-overhead"``, the default on CUDA devices: the cache buffers the graphs write are
marked static addresses, and what a call returns is cloned, :func:`_kept`). The view keeps the
cache's host-side length itself (a compiled graph never reads it). A call on a non-static
cache, or one that would outgrow the cache, runs eager; a method whose compilation fails warns once and runs eager
from then on. Off by default (docs/decoding_speed.md: compiling costs tens of seconds per call
kind, which a short generation does not earn back).

Torch-only, like its siblings (the Hugging Face export ships it verbatim).
"""

from __future__ import annotations

import dataclasses
import os
import warnings

import torch

from .cache import ContextCache


class CompiledDecoding:
    """``model`` with ``advance`` / ``denoise_block`` under ``torch.compile`` (``mode``: its
    mode, None for the default); every other attribute is the model's."""

    static_caches = True
    """The samplers give this view static caches (``ContextCache.reserve(static=True)``)."""

    def __init__(self, model, mode: str | None = None):
        self._model, self.mode = model, mode
        self._compiled = {
            name: torch.compile(_undecorated(getattr(model, name)), dynamic=False, mode=mode)
            for name in ("advance", "denoise_block")
        }
        self._functions: dict = {}  # compile_function's originals, by name
        self.failures: dict[str, str] = {}
        """Method → why compiling it failed (it then runs eager from that call on)."""

    @property
    def wrapped(self):
        """The model this view compiles (what a :meth:`compile_function` function calls)."""
        return self._model

    @torch.no_grad()
    def advance(self, cache, tokens, logits="last", position_states=False):
        length = cache.length + tokens.shape[1]
        compiled = cache.static and length <= cache.capacity
        out = self._call("advance", compiled, (cache, tokens, logits, position_states))
        if compiled:
            out.cache._length = length  # the graph never reads the host's length (cache.py)
        return out

    @torch.no_grad()
    def denoise_block(self, cache, *args, **kwargs):
        return self._call("denoise_block", cache.static, (cache, *args), kwargs)

    def compile_function(self, function):
        """``function`` (device work a sampler runs per step on :attr:`wrapped`, e.g. a
        denoising step: forward and commit rule) compiled like the methods, once per view;
        eager after a failure, like them."""
        name = function.__name__
        if name not in self._compiled:
            self._compiled[name] = torch.compile(function, dynamic=False, mode=self.mode)
            self._functions[name] = function
        return lambda *args: self._call(name, True, args)

    def _call(self, name: str, compiled: bool, args, kwargs=None):
        kwargs = kwargs or {}
        if compiled and self.mode == "reduce-overhead":
            # The graphs write into the cache's buffers: CUDA graphs replay only over inputs
            # at fixed addresses (a new generation's buffers re-record once).
            for cache in (a for a in args if isinstance(a, ContextCache)):
                buffers = (t for pair in cache.buffers.values() for t in pair)
                for tensor in (cache.valid_buffer, *buffers):
                    torch._dynamo.mark_static_address(tensor)
        if compiled and name not in self.failures:
            try:
                result = self._compiled[name](*args, **kwargs)
                return _kept(result) if self.mode == "reduce-overhead" else result
            except Exception as error:  # noqa: BLE001 — a compiler failure, not the model's
                # Dynamo fails while tracing or guarding, before the graph runs: nothing was
                # written to the cache, so the eager call below starts from the same state.
                self.failures[name] = f"{type(error).__name__}: {str(error).splitlines()[0]}"
                warnings.warn(
                    f"torch.compile failed on {name} ({self.failures[name]}); "
                    "it runs eager from now on",
                    stacklevel=3,
                )
        if name in self._functions:
            return self._functions[name](*args, **kwargs)
        return getattr(self._model, name)(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._model, name)


def _kept(value):
    """A compiled call's result, safe to keep past the next replay of its CUDA graph (which
    reuses its outputs' memory; the samplers keep caches and logits across calls): its
    tensors cloned — except a cache's buffers, the caller's inputs written in place."""
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, dict):
        return {key: _kept(item) for key, item in value.items()}
    if isinstance(value, ContextCache):  # buffers, keys/values and validity are the inputs'
        return dataclasses.replace(
            value,
            mamba=_kept(value.mamba),
            end=None if value.end is None else value.end.clone(),
        )
    if dataclasses.is_dataclass(value):
        fields = dataclasses.fields(value)
        return dataclasses.replace(value, **{f.name: _kept(getattr(value, f.name)) for f in fields})
    return value


def _undecorated(method):
    """``method`` without its ``torch.no_grad()`` wrapper: every wrapped method shares the
    wrapper's code object, and dynamo counts recompiles per code object — compiled through it,
    ``advance`` and ``denoise_block`` would exhaust one shared limit."""
    function = getattr(method.__func__, "__wrapped__", method.__func__)
    return function.__get__(method.__self__)


RECOMPILE_LIMIT = 64
"""Graphs dynamo may keep per decoding method. One ``advance`` serves the AR step, a block's
advance, the speculative verify (all logits, per-position states) and mock-AR's caches, each a
graph of its own: past dynamo's default of 8 it would silently fall back to eager."""


def enable_dynamo() -> None:
    """Turn TorchDynamo back on in a process that disabled it (the command lines disable it
    for Megatron's ``jit_fuser``; ``torch.compile`` reads the variable on every call)."""
    os.environ.pop("TORCHDYNAMO_DISABLE", None)
    torch._dynamo.config.disable = False


def decoding_model(model, config):
    """What a sampler drives: ``model``, or its compiled view when ``config.compile`` (CUDA
    graphs where the denoiser runs on a CUDA device)."""
    if not config.compile:
        return model
    cuda = torch.device(model.denoiser_device).type == "cuda"
    return compiled(model, "reduce-overhead" if cuda else None)


def compiled(model, mode: str | None = None) -> CompiledDecoding:
    """The compiled view of ``model`` (built on first use per ``mode``, then cached on the
    model, so a model compiles once)."""
    if isinstance(model, CompiledDecoding):
        return model
    if torch._dynamo.config.disable or os.environ.get("TORCHDYNAMO_DISABLE") == "1":
        raise ValueError(
            "compile=True needs TorchDynamo, which is disabled in this process "
            "(TORCHDYNAMO_DISABLE=1); unset it, or decode with compile=False"
        )
    config = torch._dynamo.config
    config.recompile_limit = max(config.recompile_limit, RECOMPILE_LIMIT)
    config.accumulated_recompile_limit = max(
        config.accumulated_recompile_limit, 4 * RECOMPILE_LIMIT
    )
    views = model.__dict__.setdefault("_compiled_decoding", {})
    if mode not in views:
        views[mode] = CompiledDecoding(model, mode)
    return views[mode]
