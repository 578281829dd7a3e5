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
  back to any accepted length exactly (:meth:`ContextOutput.rollback`; speculative decoding);
* ``denoise_block(cache, block, t)`` — denoiser logits (b, S, V) for the block of S tokens right
  after the cache, at diffusion time ``t`` (b,): the raw output at every block position.
  Which token each output scores is the attribute ``denoiser_shift``: False, the token at that
  position; True, the token after it (``samplers.block_logits`` turns either into per-position
  scores).

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

    def rollback(self, previous: ContextCache, keep: torch.Tensor) -> ContextCache:
        """This advance's cache with row r keeping only the first ``keep[r]`` (b,) of its s new
        positions — what it would be had ``advance`` seen just those (needs ``position_states``).

        Rows are re-left-padded to the common length P + max(keep): a row that keeps fewer
        positions gets its K/V shifted right, behind more padding. That is exact because the
        model has no positional embeddings, and padding never reaches attention. Each Mamba
        layer takes its states after the row's last kept position (the pre-advance state when
        it keeps none).
        """
        cache = self.cache
        batch, total = cache.valid.shape
        new = total - previous.length
        keep = keep.to(device=cache.valid.device, dtype=torch.long)
        if keep.shape != (batch,) or bool((keep < 0).any()) or bool((keep > new).any()):
            raise ValueError(f"keep must be (b,) = ({batch},) values in [0, {new}]")
        length = previous.length + int(keep.max())
        # Position j of row r comes from position j − shift[r] of the advanced cache.
        shift = length - previous.length - keep  # (b,) extra left padding per row
        source = torch.arange(length, device=keep.device) - shift[:, None]
        inside = source >= 0  # (b, length); False at the extra left padding
        source = source.clamp(min=0)

        def take(kv: torch.Tensor) -> torch.Tensor:  # (b, h, total, d) → (b, h, length, d)
            index = source[:, None, :, None].expand(kv.shape[0], kv.shape[1], length, kv.shape[3])
            return kv.gather(2, index)

        rows = torch.arange(batch, device=keep.device)
        last = (keep - 1).clamp(min=0)  # (b,) index of each row's last kept position

        def state(before: torch.Tensor | None, after: torch.Tensor) -> torch.Tensor:
            chosen = after[rows, last]  # (b, …) the state after that position
            if before is None:  # advanced from an empty cache: zeros came before
                before = torch.zeros_like(chosen)
            none_kept = (keep == 0).view(-1, *([1] * (chosen.dim() - 1)))
            return torch.where(none_kept, before.to(chosen.dtype), chosen)

        mamba = {}
        for i, after in self.position_states.items():
            before = previous.mamba.get(i)
            mamba[i] = MambaStates(
                conv=state(None if before is None else before.conv, after.conv),
                ssm=state(None if before is None else before.ssm, after.ssm),
            )
        if set(mamba) != set(cache.mamba):
            raise ValueError("rollback needs advance(..., position_states=True)")
        return ContextCache(
            keys={i: take(k) for i, k in cache.keys.items()},
            values={i: take(v) for i, v in cache.values.items()},
            mamba=mamba,
            valid=cache.valid.gather(1, source) & inside,
        )


class DecodingModel(Protocol):
    """What the samplers call (module docstring)."""

    context_device: torch.device
    denoiser_device: torch.device
    denoiser_shift: bool

    def prefill(
        self, tokens: torch.Tensor, valid: torch.Tensor | None = None, logits: str = "last"
    ) -> ContextOutput: ...

    def advance(
        self,
        cache: ContextCache,
        tokens: torch.Tensor,
        logits: str = "last",
        position_states: bool = False,
    ) -> ContextOutput: ...

    def denoise_block(
        self, cache: ContextCache, block: torch.Tensor, t: torch.Tensor
    ) -> torch.Tensor: ...
