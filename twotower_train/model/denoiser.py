"""The denoiser tower: the backbone's layers, conditioned layer-by-layer on the context tower.

Each denoiser layer i is coupled only to context layer i (docs/architecture.md):

* attention — queries from the noisy block; keys/values = context K_i/V_i before the block
  start ⊕ the block's own (bidirectional in the block);
* Mamba-2 — causal inside the block, conv and SSD seeded with the context states at the block
  start;
* MoE / MLP — per token, unchanged;

and every layer is modulated by adaLN-single (:mod:`twotower_train.model.adaln`).

Where the conditioning comes from is a small object with two methods (``mamba_seed``,
``attend``): :class:`BlockwiseConditioning` for the vectorised training forward (all blocks
of a sequence at once) and :class:`CacheConditioning` for one block decoded against a
:class:`~twotower_train.model.context_tower.ContextCache`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange
from megatron.core import tensor_parallel
from megatron.core.models.hybrid.hybrid_model import HybridModel
from megatron.core.transformer.module import MegatronModule

from twotower_train.inference.cache import ContextCache, ContextOutput, MambaStates
from twotower_train.model.adaln import AdaLNSingle
from twotower_train.model.layers import LayerKind, embed, iter_layers, lm_head, pre_norm
from twotower_train.model.mixers import attention_out, attention_qkv, mamba_forward
from twotower_train.ops.block_attention import block_decode_attention, denoiser_attention


@dataclass
class BlockwiseConditioning:
    """Training: the context tower ran over the clean sequence of ``blocks`` blocks of size S."""

    context: ContextOutput
    block_size: int
    blocks: int

    def mamba_seed(self, layer: int) -> MambaStates:
        # States at p = b·S for b = 0..n−1 (drop the final one), one seed per (batch, block).
        bounds = self.context.boundaries[layer]
        return MambaStates(
            conv=rearrange(bounds.conv[:, : self.blocks], "b n w d -> (b n) w d"),
            ssm=rearrange(bounds.ssm[:, : self.blocks], "b n h p s -> (b n) h p s"),
        )

    def attend(self, layer, q, k, v, causal_in_block: bool) -> torch.Tensor:
        cache = self.context.cache
        return denoiser_attention(
            q, cache.keys[layer], cache.values[layer], k, v, self.block_size,
            causal_in_block=causal_in_block,
        )


@dataclass
class CacheConditioning:
    """Inference: one block right after the ``cache.length`` positions in the cache."""

    cache: ContextCache
    blocks: int = 1

    def mamba_seed(self, layer: int) -> MambaStates:
        return self.cache.mamba[layer]

    def attend(self, layer, q, k, v, causal_in_block: bool) -> torch.Tensor:
        return block_decode_attention(
            q, self.cache.keys[layer], self.cache.values[layer], k, v,
            context_valid=self.cache.valid, causal_in_block=causal_in_block,
        )


Conditioning = BlockwiseConditioning | CacheConditioning


class Denoiser(MegatronModule):
    """Backbone layers + adaLN-single, conditioned on the context tower."""

    def __init__(self, backbone: HybridModel, adaln: AdaLNSingle):
        super().__init__(config=backbone.config)
        self.backbone = backbone
        self.adaln = adaln

    def forward(
        self,
        tokens: torch.Tensor,
        t_tokens: torch.Tensor,
        conditioning: Conditioning,
        *,
        causal_in_block: bool = False,
    ) -> torch.Tensor:
        """Noisy tokens (b, n·S) with per-token times (b, n·S) → logits (b, n·S, V/TP)."""
        model = self.backbone
        hidden = embed(model, tokens)  # (s, b, d)
        base = self.adaln(t_tokens.transpose(0, 1))  # (s, b, 3d)
        if self.config.sequence_parallel:
            base = tensor_parallel.scatter_to_sequence_parallel_region(base)
        for i, kind, layer in iter_layers(model):
            mod = self.adaln.layer(base, i)
            normed = mod.pre(pre_norm(kind, layer)(hidden))
            if kind is LayerKind.MAMBA:
                out = mamba_forward(
                    layer.mixer,
                    normed,
                    initial=conditioning.mamba_seed(i),
                    blocks=conditioning.blocks,
                ).out
            elif kind is LayerKind.ATTENTION:
                q, k, v = attention_qkv(layer.self_attention, normed)
                attended = conditioning.attend(i, q, k, v, causal_in_block)
                out = attention_out(layer.self_attention, attended)
            else:
                out, _ = layer.mlp(normed)
            hidden = hidden + mod.post(out)
        return lm_head(model, hidden)
