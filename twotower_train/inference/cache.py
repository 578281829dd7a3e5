"""The decoding state the samplers carry, and the interface a two-tower model offers them.

Torch-only on purpose: this module, :mod:`.sampling` and :mod:`.samplers` import nothing but
``torch`` and each other (relative imports), so the Hugging Face export copies them verbatim
next to its modeling code and both implementations decode with the same algorithm.

A model the samplers can drive (:class:`DecodingModel`) has three methods, all under
``torch.no_grad()`` and all returning **full-vocabulary** logits (a tensor-parallel model gathers
them itself):

* ``prefill(tokens, valid=None, logits="last")`` — the context tower over left-padded prompts
  ``tokens`` (b, P) (``valid`` (b, P) False at padding) → :class:`ContextOutput`;
* ``advance(cache, tokens, logits="last", position_states=False)`` — the context tower over
  ``tokens`` (b, s) appended to ``cache`` → :class:`ContextOutput` whose cache covers P + s
  positions. With ``position_states`` it also returns, per Mamba layer, the states after every
  one of the s positions (:attr:`ContextOutput.position_states`), so a caller can roll the cache
  back to any accepted length exactly (speculative decoding);
* ``denoise_block(cache, block, t)`` — denoiser logits (b, S, V) for the block of S tokens right
  after the cache, at diffusion time ``t`` (b,).

``logits`` is ``"all"`` (b, s, V), ``"last"`` (b, 1, V) or ``"none"``. Two attributes say
where the towers live, ``context_device`` and ``denoiser_device`` (the same device unless the
towers were placed apart); the samplers move the cache to the denoiser's device before each
denoiser call and committed tokens back to the context tower's (:meth:`ContextCache.to`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch


@dataclass
class MambaStates:
    """Conv state (B, w−1, conv_dim) and SSM state (B, heads, head_dim, d_state), fp32.

    With an extra axis after B (e.g. (b, n, …)) it holds one state per block boundary or per
    position."""

    conv: torch.Tensor
    ssm: torch.Tensor

    def to(self, device: torch.device) -> MambaStates:
        return MambaStates(conv=self.conv.to(device), ssm=self.ssm.to(device))


@dataclass
class ContextCache:
    """Per-layer context state after ``length`` positions of a (left-padded) batch.

    keys/values: layer → (b, kv_heads, P, head_dim); mamba: layer → states after position P;
    valid: (b, P) bool, False at left padding.
    """

    keys: dict[int, torch.Tensor] = field(default_factory=dict)
    values: dict[int, torch.Tensor] = field(default_factory=dict)
    mamba: dict[int, MambaStates] = field(default_factory=dict)
    valid: torch.Tensor | None = None

    @property
    def length(self) -> int:
        return 0 if self.valid is None else self.valid.shape[1]

    def to(self, device: torch.device) -> ContextCache:
        """This cache on ``device`` — itself when it is already there (one-device decoding)."""
        if self.valid is None or self.valid.device == torch.device(device):
            return self
        return ContextCache(
            keys={i: k.to(device) for i, k in self.keys.items()},
            values={i: v.to(device) for i, v in self.values.items()},
            mamba={i: m.to(device) for i, m in self.mamba.items()},
            valid=self.valid.to(device),
        )


@dataclass
class ContextOutput:
    cache: ContextCache  # covers every position seen so far (prefix + these tokens)
    logits: torch.Tensor | None  # per the `logits` argument (vocab-parallel inside the towers)
    boundaries: dict[int, MambaStates] = field(default_factory=dict)
    """Training: states at every block boundary, (b, s/S + 1, …) per Mamba layer."""
    position_states: dict[int, MambaStates] = field(default_factory=dict)
    """``advance(..., position_states=True)``: states after each new position, (b, s, …)."""


class DecodingModel(Protocol):
    """What the samplers call (module docstring)."""

    context_device: torch.device
    denoiser_device: torch.device

    def prefill(
        self, tokens: torch.Tensor, valid: torch.Tensor | None = None, logits: str = "last"
    ) -> ContextOutput: ...

    def advance(
        self, cache: ContextCache, tokens: torch.Tensor, logits: str = "last",
        position_states: bool = False,
    ) -> ContextOutput: ...

    def denoise_block(
        self, cache: ContextCache, block: torch.Tensor, t: torch.Tensor
    ) -> torch.Tensor: ...
