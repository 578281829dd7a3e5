"""Where a two-tower model's tensors live after the towers were placed apart.

Two distinct CPU devices do not exist, so the tests place one tower on the ``meta`` device and
the other on the CPU: a tensor left on (or moved to) the wrong tower's device shows up by its
``.device``, and an operation that mixes the two raises.
"""

from __future__ import annotations

import torch

EXPORT_TOWERS = {
    "context_tower.": "context",
    "context_lm_head.": "context",
    "denoiser_tower.": "denoiser",
    "lm_head.": "denoiser",
    "t_embedder.": "denoiser",
    "t_block.": "denoiser",
    "scale_shift_tables.": "denoiser",
}
"""The Hugging Face export's state-dict prefixes (the released module names) → their tower."""


def tensor_devices(model: torch.nn.Module, towers: dict[str, str]) -> dict[str, set]:
    """Tower name → the devices of its parameters and buffers; ``towers`` maps each state-dict
    prefix (e.g. ``"denoiser."``) to its tower. A tensor under no prefix fails the caller's
    check: it lands under ``"unassigned"``."""
    found: dict[str, set] = {}
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        tower = next((t for prefix, t in towers.items() if name.startswith(prefix)), "unassigned")
        found.setdefault(tower, set()).add(tensor.device)
    return found


def cache_devices(cache) -> set[torch.device]:
    """The devices of every tensor a ``ContextCache`` holds (K/V, Mamba states, validity)."""
    assert cache.keys and cache.values and cache.mamba, "a cache of attention and Mamba layers"
    tensors = [*cache.keys.values(), *cache.values.values(), cache.valid]
    for states in cache.mamba.values():
        tensors += [states.conv, states.ssm]
    return {t.device for t in tensors}
