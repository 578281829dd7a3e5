"""Denoiser attention kernels and their backend switch (docs/diffusion.md §3).

The denoiser's queries (L noisy positions) attend to ``[context K/V (L)] ⊕ [noisy K/V (L)]``
under the pattern of :mod:`twotower_train.diffusion.masks`. Two implementations:

* ``DENSE`` — concatenate the keys to length 2L and call ``F.scaled_dot_product_attention``
  with the dense (L, 2L) boolean mask. O(L^2) memory; the reference path, used on CPU and as
  the oracle in tests.
* ``FLEX`` — ``torch.nn.attention.flex_attention`` with a cached block mask. Under
  ``torch.compile`` (on CUDA) the fused kernel, forward and backward, skips empty tiles and
  never materialises the score matrix, so memory grows O(L·S) instead of O(L^2) (the block
  mask itself is O((L/128)^2) tile indices). Eager (CPU) flex is an unfused, forward-only path
  (torch has no CPU FlexAttention backward) used for parity tests only.

Which one runs is the caller's choice: ``AUTO`` (FLEX on CUDA, DENSE elsewhere) is resolved by
:func:`twotower_train.backends.resolve_backend`, where tests also force a backend with
:func:`twotower_train.backends.forced_backend`; this module computes the backend it is given.

Shapes: q (b, heads, L, d); k/v (b, kv_heads, L, d) with ``heads % kv_heads == 0`` (GQA).
"""

from __future__ import annotations

import enum
import os
import warnings

import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import flex_attention

from twotower_train.diffusion.masks import denoiser_block_mask, denoiser_mask_dense

__all__ = [
    "AttentionBackend",
    "denoiser_attention",
]


class AttentionBackend(enum.Enum):
    """Which kernel computes the denoiser attention (module docstring); ``AUTO`` is for
    :func:`twotower_train.backends.resolve_backend` to turn into DENSE or FLEX."""

    AUTO = "auto"
    DENSE = "dense"
    FLEX = "flex"


_compiled_flex = None


def _check_shapes(q: torch.Tensor, *kv: torch.Tensor) -> None:
    if q.dim() != 4 or any(t.dim() != 4 for t in kv):
        raise ValueError("q, k and v must be (batch, heads, seq, head_dim)")
    heads, kv_heads = q.shape[1], kv[0].shape[1]
    if any(t.shape[1] != kv_heads for t in kv) or heads % kv_heads != 0:
        raise ValueError(f"heads={heads} must be a multiple of kv_heads={kv_heads} (GQA)")


def _flex(q, k, v, block_mask, scale):
    """FlexAttention call: compiled (fused, block-sparse) on CUDA, eager elsewhere."""
    global _compiled_flex
    if q.device.type == "cuda":
        if _compiled_flex is None:
            if os.environ.get("TORCHDYNAMO_DISABLE", "") == "1":
                # torch.compile would be a no-op: eager flex materialises the O(L^2) scores.
                warnings.warn(
                    "TORCHDYNAMO_DISABLE=1: FlexAttention runs unfused (O(L^2) memory)",
                    stacklevel=2,
                )
                return flex_attention(q, k, v, block_mask=block_mask, scale=scale, enable_gqa=True)
            _compiled_flex = torch.compile(flex_attention, dynamic=False)
        return _compiled_flex(q, k, v, block_mask=block_mask, scale=scale, enable_gqa=True)
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        raise NotImplementedError(
            "AttentionBackend.FLEX on CPU is forward-only (torch has no CPU FlexAttention "
            "backward); use AttentionBackend.DENSE (what AUTO picks on CPU) for training"
        )
    q, k, v = q.detach(), k.detach(), v.detach()  # torch refuses requires_grad inputs on CPU
    with warnings.catch_warnings():
        # Eager flex on CPU is deliberate (parity reference); silence its "not compiled" hint.
        warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
        return flex_attention(q, k, v, block_mask=block_mask, scale=scale, enable_gqa=True)


def denoiser_attention(
    q: torch.Tensor,
    k_ctx: torch.Tensor,
    v_ctx: torch.Tensor,
    k_noisy: torch.Tensor,
    v_noisy: torch.Tensor,
    block_size: int,
    *,
    causal_in_block: bool = False,
    backend: AttentionBackend = AttentionBackend.DENSE,
    softmax_scale: float | None = None,
) -> torch.Tensor:
    """Vectorised training attention over all blocks with ``backend`` (DENSE or FLEX; the model
    passes :func:`twotower_train.backends.resolve_backend`'s choice); returns (b, heads, L, d)."""
    _check_shapes(q, k_ctx, v_ctx, k_noisy, v_noisy)
    seq_len = q.shape[2]
    if any(t.shape[2] != seq_len for t in (k_ctx, v_ctx, k_noisy, v_noisy)):
        raise ValueError("context and noisy keys/values must have the query length L")
    k = torch.cat([k_ctx, k_noisy], dim=2)  # (b, kv_heads, 2L, d)
    v = torch.cat([v_ctx, v_noisy], dim=2)  # (b, kv_heads, 2L, d)
    if backend not in (AttentionBackend.DENSE, AttentionBackend.FLEX):
        raise ValueError(f"backend must be DENSE or FLEX (resolve AUTO first), got {backend!r}")
    if backend is AttentionBackend.FLEX:
        block_mask = denoiser_block_mask(
            seq_len, block_size, causal_in_block=causal_in_block, device=q.device
        )
        return _flex(q, k, v, block_mask, softmax_scale)
    mask = denoiser_mask_dense(
        seq_len, block_size, causal_in_block=causal_in_block, device=q.device
    )  # (L, 2L)
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, scale=softmax_scale, enable_gqa=q.shape[1] != k.shape[1]
    )
