"""The context tower: the frozen causal backbone that exposes what the denoiser conditions on.

Running over clean tokens it returns, per layer (docs/architecture.md):

* attention layers — K and V for every position;
* Mamba layers — the conv and SSM states at every block boundary p = b·S (``state_stride=S``),
  exact for any S dividing the length and independent of the Mamba chunk size; or, continuing a
  cache (``position_states=True``), the states after every new position, so a speculative
  verifier can roll the cache back to any accepted length.

The same forward extends a :class:`ContextCache` (prefill, then ``advance`` over committed
blocks), which is what the samplers use. Its logits equal the backbone's causal LM logits.
"""

from __future__ import annotations

import torch
from megatron.core.models.hybrid.hybrid_model import HybridModel
from megatron.core.transformer.module import MegatronModule

from twotower_train.decoding.cache import ContextCache, MambaStates
from twotower_train.decoding.interface import ContextOutput
from twotower_train.model.layers import LayerKind, embed, iter_layers, lm_head, pre_norm
from twotower_train.model.mixers import (
    attention_out,
    attention_qkv,
    causal_attention,
    mamba_forward,
)
from twotower_train.model.moe_decode import moe_decode


class ContextTower(MegatronModule):
    """Causal forward of a backbone ``HybridModel`` with K/V and Mamba-state outputs."""

    def __init__(self, backbone: HybridModel):
        super().__init__(config=backbone.config)
        self.backbone = backbone

    def forward(
        self,
        tokens: torch.Tensor,
        *,
        cache: ContextCache | None = None,
        valid: torch.Tensor | None = None,
        state_stride: int | None = None,
        boundary_dtype: torch.dtype | None = None,
        position_states: bool = False,
        logits: str = "all",
    ) -> ContextOutput:
        """Run over ``tokens`` (b, s), continuing from ``cache`` if given.

        Args:
            valid: (b, s) bool, False at left padding (prefill of prompts of unequal length).
            state_stride: also return Mamba states at every multiple of this many positions
                (block boundaries); only from an empty cache.
            boundary_dtype: keep those states in this dtype (the training forward passes the
                parameter dtype: bf16 seeds on a GPU, half the fp32 size; docs/memory.md).
            position_states: also return, per Mamba layer, the states after each of the s
                new positions (:attr:`ContextOutput.position_states`, (b, s, …)).
            logits: "all", "last" or "none".
        """
        cache = cache or ContextCache()
        if state_stride is not None and cache.length:
            raise ValueError("state_stride needs a forward from position 0 (no cache)")
        if state_stride is not None and position_states:
            raise ValueError("state_stride and position_states are exclusive")
        # States after every new position = boundaries at stride 1 from this call's start.
        stride = 1 if position_states else state_stride
        # Padding masks only where a position may be padding: a prompt batch with padding
        # (read once, at prefill) or any cache (earlier padding, speculative holes — masked
        # without asking, so an advance reads nothing back from the device).
        padded = valid is not None and not bool(valid.all())
        if valid is None:
            valid = torch.ones(tokens.shape, dtype=torch.bool, device=tokens.device)
        new = cache.extend(valid)  # valid (b, P + s); K/V written per layer below
        mask = new.causal_mask(tokens.shape[1])  # a static cache's (compiled decoding)
        key_valid = None if mask is not None else new.valid if padded or cache.length else None
        valid = valid if padded else None
        model = self.backbone
        # Prefill / advance (the training forward asks for block-boundary states instead).
        decoding = state_stride is None and not torch.is_grad_enabled()
        out = ContextOutput(cache=new, logits=None)
        hidden = embed(model, tokens)
        for i, kind, layer in iter_layers(model):
            normed = pre_norm(kind, layer)(hidden)
            if kind is LayerKind.MAMBA:
                result = mamba_forward(
                    layer.mixer,
                    normed,
                    initial=cache.mamba.get(i),
                    state_stride=stride,
                    valid=valid,
                )
                new.mamba[i] = result.final
                if position_states:  # boundary k is the state before new position k: drop k=0
                    out.position_states[i] = MambaStates(
                        conv=result.boundaries.conv[:, 1:], ssm=result.boundaries.ssm[:, 1:]
                    )
                elif result.boundaries is not None:
                    bounds = result.boundaries
                    if boundary_dtype is not None:  # compact as produced, layer by layer
                        bounds = MambaStates(
                            conv=bounds.conv.to(boundary_dtype), ssm=bounds.ssm.to(boundary_dtype)
                        )
                    out.boundaries[i] = bounds
                hidden = hidden + result.out
            elif kind is LayerKind.ATTENTION:
                q, k, v = attention_qkv(layer.self_attention, normed)
                k, v = new.write_kv(i, k, v)  # (b, kv_heads, P + s, hd): cached, then new
                attended = causal_attention(q, k, v, key_valid=key_valid, mask=mask)
                hidden = hidden + attention_out(layer.self_attention, attended)
            elif decoding:  # MoE without Megatron's dispatcher (model/moe_decode.py)
                hidden = hidden + moe_decode(layer.mlp, normed)
            else:
                mlp_out, _ = layer.mlp(normed)
                hidden = hidden + mlp_out
        if logits == "all":
            out.logits = lm_head(model, hidden)
        elif logits == "last":
            out.logits = lm_head(model, hidden[-1:])
        elif logits != "none":
            raise ValueError(f"logits={logits!r}; use 'all', 'last' or 'none'")
        return out
