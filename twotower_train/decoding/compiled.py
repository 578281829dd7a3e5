"""``DecodeConfig.compile``: the decoding forwards under ``torch.compile``.

:func:`compiled` gives a view of a :class:`~.cache.DecodingModel` whose ``advance`` (the AR
step, the block advance, the speculative verify) and ``denoise_block`` (every denoising step)
run compiled; ``prefill`` stays eager (it runs once per call, on prompt shapes that differ every
time). Both modes get the same treatment, so an AR / diffusion comparison stays fair. The view
is built once per model and reused by every later call, so a model compiles once.

Shapes are dynamic (``dynamic=True``: the cache grows by one position per AR step and one block
per diffusion block, which would otherwise recompile per length), which rules out CUDA graphs
(``mode="reduce-overhead"`` records one graph per shape). A method whose compilation fails
warns once and runs eager from then on. Off by default (docs/decoding_speed.md: on the demo
model on a CPU the compiled forwards ran 1.8–1.9× faster, but compiling takes tens of seconds
per call kind and the denoiser's hit a TorchDynamo guard error under the benchmark's mix of
shapes).

Torch-only, like its siblings (the Hugging Face export ships it verbatim).
"""

from __future__ import annotations

import os
import warnings

import torch


class CompiledDecoding:
    """``model`` with ``advance`` / ``denoise_block`` under ``torch.compile`` (``mode``: its
    mode, None for the default); every other attribute is the model's."""

    def __init__(self, model, mode: str | None = None):
        self._model, self.mode = model, mode
        self._compiled = {
            name: torch.compile(_undecorated(getattr(model, name)), dynamic=True, mode=mode)
            for name in ("advance", "denoise_block")
        }
        self.failures: dict[str, str] = {}
        """Method → why compiling it failed (it then runs eager from that call on)."""

    @torch.no_grad()
    def advance(self, *args, **kwargs):
        return self._call("advance", args, kwargs)

    @torch.no_grad()
    def denoise_block(self, *args, **kwargs):
        return self._call("denoise_block", args, kwargs)

    def _call(self, name: str, args, kwargs):
        if name not in self.failures:
            try:
                return self._compiled[name](*args, **kwargs)
            except Exception as error:  # noqa: BLE001 — a compiler failure, not the model's
                # Dynamo fails while tracing or guarding, before the graph runs: nothing was
                # written to the cache, so the eager call below starts from the same state.
                self.failures[name] = f"{type(error).__name__}: {str(error).splitlines()[0]}"
                warnings.warn(
                    f"torch.compile failed on {name} ({self.failures[name]}); "
                    "it runs eager from now on",
                    stacklevel=3,
                )
        return getattr(self._model, name)(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._model, name)


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
    """What a sampler drives: ``model``, or its compiled view when ``config.compile``."""
    return compiled(model) if config.compile else model


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
