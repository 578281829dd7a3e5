"""The interface a two-tower model offers the samplers, and what its context calls return.

Torch-only, like its siblings (the Hugging Face export ships it verbatim).

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
  position; True, the token after it (``unmasking.block_logits`` turns either into per-position
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

from .cache import ContextCache, MambaStates


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

        The cache ends after P + max(keep) positions; a row that keeps fewer has its rejected
        positions marked invalid (holes, never attended to). That is exact because the model
        has no positional embeddings: attention sees the same keys in the same order. Each
        Mamba layer takes its states after the row's last kept position (the pre-advance state
        when it keeps none). No K/V moves: the cache is a view of what the advance wrote.
        """
        cache = self.cache
        batch, total = cache.valid.shape[0], cache.length
        new = total - previous.length
        keep = keep.to(device=cache.valid.device, dtype=torch.long)
        if keep.shape != (batch,) or bool((keep < 0).any()) or bool((keep > new).any()):
            raise ValueError(f"keep must be (b,) = ({batch},) values in [0, {new}]")
        kept = int(keep.max())
        length = previous.length + kept
        holes = torch.arange(kept, device=keep.device) < keep[:, None]  # (b, kept): kept
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
        if cache.valid_buffer is not None:  # mark the holes where the next extend won't write
            cache.valid_buffer[:, previous.length : length] &= holes
            valid = cache.valid_buffer[:, :length]
            if cache.static:  # the same buffers, ending after the kept positions
                return cache._like(
                    lambda t: t, mamba=mamba, end=previous.end + kept, _length=length
                )
        elif previous.valid is None:
            valid = holes
        else:
            valid = torch.cat([previous.valid, holes], dim=1)
        return ContextCache(
            keys={i: k[:, :, :length] for i, k in cache.keys.items()},
            values={i: v[:, :, :length] for i, v in cache.values.items()},
            mamba=mamba,
            valid=valid,
            buffers=cache.buffers,
            valid_buffer=cache.valid_buffer,
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
