"""Denoiser attention patterns (docs/diffusion.md §2).

Training (all blocks at once). Queries are the ``L`` noisy positions; keys are the ``L`` clean
*context* positions (context tower K/V) followed by the ``L`` *noisy* positions (the denoiser's
own K/V), so the key axis has length ``2L``. With block size ``S``, query ``i`` belongs to block
``b = i // S`` whose start is ``p = b * S``. The mask (True = may attend) is the OR of two
sub-masks:

* **context sub-mask** (keys ``j`` in ``[0, L)``): ``j < p`` — every clean position strictly
  before the query's block start; nothing from the context at or after ``p``.
* **in-block sub-mask** (keys ``L + j`` for ``j`` in ``[0, L)``): ``j // S == b`` — the noisy
  positions of the query's own block, bidirectional; with ``causal_in_block=True`` additionally
  ``j <= i`` (used by the invariant test I1, where the denoiser must reproduce the causal
  context tower).

Picture for L=8, S=4 (``#`` = attend), see also ``docs/diffusion.md``::

                 context keys     noisy keys
                 0 1 2 3 4 5 6 7  0 1 2 3 4 5 6 7
    query 0..3   . . . . . . . .  # # # # . . . .
    query 4..7   # # # # . . . .  . . . . # # # #

Inference (one block at a time). Queries are the ``S`` noisy positions of the block being
decoded; keys are the context cache ``[0, P)`` followed by the block's own ``S`` keys. Batched
prompts of different lengths are LEFT padded, so every row's block starts at cache length ``P``
and a per-row ``context_valid`` mask removes the padding keys (**padding sub-mask**).

Every query row always has at least one allowed key (its own block), so no softmax row is empty.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch.nn.attention.flex_attention import BlockMask, create_block_mask

__all__ = [
    "context_valid_from_lengths",
    "denoiser_block_mask",
    "denoiser_mask_dense",
    "denoiser_mask_mod",
]

MaskMod = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _check(seq_len: int, block_size: int) -> None:
    if block_size <= 0 or seq_len <= 0:
        raise ValueError(f"seq_len and block_size must be positive, got {seq_len}, {block_size}")
    if seq_len % block_size != 0:
        raise ValueError(f"block_size={block_size} must divide seq_len={seq_len}")


def denoiser_mask_mod(seq_len: int, block_size: int, causal_in_block: bool = False) -> MaskMod:
    """FlexAttention ``mask_mod(b, h, q_idx, kv_idx)`` with ``kv_idx`` in ``[0, 2L)``.

    Written with tensor ops only, so it also works on broadcast index grids
    (:func:`denoiser_mask_dense` evaluates it that way).
    """
    _check(seq_len, block_size)

    def mask_mod(b, h, q_idx, kv_idx):
        q_block = q_idx // block_size
        is_context = kv_idx < seq_len
        context_ok = is_context & (kv_idx < q_block * block_size)  # context sub-mask
        noisy_idx = kv_idx - seq_len
        in_block = (~is_context) & (noisy_idx // block_size == q_block)  # in-block sub-mask
        if causal_in_block:
            in_block = in_block & (noisy_idx <= q_idx)
        return context_ok | in_block

    return mask_mod


def denoiser_mask_dense(
    seq_len: int,
    block_size: int,
    *,
    causal_in_block: bool = False,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Dense training mask, (L, 2L) bool, True = may attend. O(L^2) memory: reference only."""
    mask_mod = denoiser_mask_mod(seq_len, block_size, causal_in_block)
    q_idx = torch.arange(seq_len, device=device).unsqueeze(1)  # (L, 1)
    kv_idx = torch.arange(2 * seq_len, device=device).unsqueeze(0)  # (1, 2L)
    return mask_mod(None, None, q_idx, kv_idx)  # (L, 2L)


@functools.lru_cache(maxsize=32)
def _cached_block_mask(
    seq_len: int, block_size: int, causal_in_block: bool, device: str
) -> BlockMask:
    mask_mod = denoiser_mask_mod(seq_len, block_size, causal_in_block)
    # Eager create_block_mask evaluates the dense (L, 2L) mask first (32 GB at L = 128K); the
    # compiled builder fuses it into per-tile counts. Eager is fine for CPU test sizes.
    build = torch.compile(create_block_mask) if device.startswith("cuda") else create_block_mask
    # B=None, H=None: one mask broadcast over batch and heads.
    return build(mask_mod, None, None, seq_len, 2 * seq_len, device=device)


def denoiser_block_mask(
    seq_len: int,
    block_size: int,
    *,
    causal_in_block: bool = False,
    device: torch.device | str,
) -> BlockMask:
    """Block-sparse training mask for FlexAttention (Q_LEN = L, KV_LEN = 2L).

    Cached by ``(seq_len, block_size, causal_in_block, device)``: the mask depends on nothing
    else, so it is built once per phase (block size) and reused every step.
    """
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return _cached_block_mask(seq_len, block_size, bool(causal_in_block), str(device))


def context_valid_from_lengths(context_lengths: torch.Tensor, cache_len: int) -> torch.Tensor:
    """(b,) real prompt lengths of a LEFT-padded batch → (b, cache_len) bool, True = real key."""
    positions = torch.arange(cache_len, device=context_lengths.device).unsqueeze(0)  # (1, P)
    return positions >= (cache_len - context_lengths).unsqueeze(1)  # (b, P)
