"""The import hook that adapts Megatron-Core the moment it is imported.

Importing :mod:`twotower_train` calls :func:`install`. When ``megatron.core`` is imported (at
once if it already is) the hook applies the CPU stand-ins of :mod:`twotower_train.cpu_compat` (a
no-op with CUDA) and gives Megatron's ``MambaMixer`` the pure-PyTorch ops where mamba_ssm's
kernels are missing (:func:`twotower_train.backends.install_mamba_fallback`). Importing this
module loads neither torch nor Megatron: ``backends`` imports torch, so it is imported only when
Megatron is.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys

from twotower_train import cpu_compat


class _ApplyAfterMegatronImport(importlib.abc.MetaPathFinder):
    """Finds ``megatron.core`` like the normal path finder does, and calls
    :func:`_after_megatron_import` right after the module has executed (a standard import hook:
    the patches need Megatron's modules, and importing Megatron eagerly would cost every command
    several seconds)."""

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
            _after_megatron_import()

        spec.loader.exec_module = exec_module
        return spec


def _after_megatron_import() -> None:
    cpu_compat.apply()
    # Not a CPU matter but due at the same moment: Megatron's MambaMixer without mamba_ssm's
    # kernels (a kernel choice, so it lives in backends; imported here, not at the top, because
    # it imports torch).
    from twotower_train import backends

    backends.install_mamba_fallback()


def install() -> None:
    """Apply the CPU stand-ins (and the Mamba kernel fallback) now if Megatron-Core is
    imported, else right after it gets imported."""
    if "megatron.core" in sys.modules:
        _after_megatron_import()
    elif not any(isinstance(f, _ApplyAfterMegatronImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _ApplyAfterMegatronImport())
