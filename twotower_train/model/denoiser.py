"""The denoiser tower: the backbone's layers, conditioned layer-by-layer on the context tower.

Each denoiser layer i is coupled only to context layer i (docs/architecture.md):

* attention — queries from the noisy block; keys/values = context K_i/V_i before the block
  start ⊕ the block's own (bidirectional in the block);
* Mamba-2 — causal inside the block, conv and SSD seeded with the context states at the block
  start;
* MoE / MLP — per token, unchanged;

and every layer is modulated by adaLN-single (:mod:`twotower_train.model.adaln`) — Mamba and
attention layers before their input norm, MoE and MLP layers after it — unless the forward is
asked to run unmodulated (``t_tokens=None``: the released mock-AR decoding).

Where the conditioning comes from is a small object with two methods (``mamba_seed``,
``attend``): :class:`BlockwiseConditioning` for the vectorised training forward (all blocks
of a sequence at once) and :class:`CacheConditioning` for one block decoded against a
:class:`~twotower_train.model.context_tower.ContextCache`.

Training memory (docs/memory.md): the layers honour Megatron's recompute settings of the
backbone's ``TransformerConfig`` (``full``: each layer one checkpoint; ``selective``: attention
core, MLP and MoE), and the LM head can run on the loss positions only (``positions``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from einops import rearrange
from megatron.core import tensor_parallel
from megatron.core.models.hybrid.hybrid_model import HybridModel
from megatron.core.transformer.module import MegatronModule

from twotower_train import backends
from twotower_train.decoding.cache import ContextCache, MambaStates
from twotower_train.decoding.interface import ContextOutput
from twotower_train.model.adaln import AdaLNSingle
from twotower_train.model.layers import (
    LayerKind,
    embed,
    iter_layers,
    lm_head,
    lm_head_at,
    pre_norm,
)
from twotower_train.model.mixers import attention_out, attention_qkv, mamba_forward
from twotower_train.model.moe_decode import moe_decode
from twotower_train.ops.block_attention import AttentionBackend, denoiser_attention


@dataclass
class BlockwiseConditioning:
    """Training: the context tower ran over the clean sequence of ``blocks`` blocks of size S."""

    context: ContextOutput
    block_size: int
    blocks: int
    _seeds: dict[int, MambaStates] = field(default_factory=dict, repr=False)

    def mamba_seed(self, layer: int) -> MambaStates:
        # States at p = b·S for b = 0..n−1 (drop the final one), one seed per (batch, block).
        # Built once per layer (a recompute asks again) and the context's boundary states are
        # released, so each layer's seeds exist once.
        if layer not in self._seeds:
            bounds = self.context.boundaries.pop(layer)
            self._seeds[layer] = MambaStates(
                conv=rearrange(bounds.conv[:, : self.blocks], "b n w d -> (b n) w d"),
                ssm=rearrange(bounds.ssm[:, : self.blocks], "b n h p s -> (b n) h p s"),
            )
        return self._seeds[layer]

    def attend(self, layer, q, k, v, causal_in_block: bool) -> torch.Tensor:
        cache = self.context.cache
        return denoiser_attention(
            q,
            cache.keys[layer],
            cache.values[layer],
            k,
            v,
            self.block_size,
            causal_in_block=causal_in_block,
            backend=backends.resolve_backend(AttentionBackend.AUTO, q.device),
        )


@dataclass
class CacheConditioning:
    """Inference: one block right after the ``cache.length`` positions in the cache."""

    cache: ContextCache
    blocks: int = 1

    def mamba_seed(self, layer: int) -> MambaStates:
        return self.cache.mamba[layer]

    def attend(self, layer, q, k, v, causal_in_block: bool) -> torch.Tensor:
        # The block's K/V go after the cache's in its buffers and the mask is built once per
        # block (ContextCache.block_kv / block_mask): no per-step copy of the context K/V.
        keys, values = self.cache.block_kv(layer, k, v)
        mask = self.cache.block_mask(q.shape[2], causal_in_block, q.device)
        return F.scaled_dot_product_attention(
            q, keys, values, attn_mask=mask, enable_gqa=q.shape[1] != keys.shape[1]
        )


Conditioning = BlockwiseConditioning | CacheConditioning


class Denoiser(MegatronModule):
    """Backbone layers + adaLN-single, conditioned on the context tower."""

    def __init__(
        self, backbone: HybridModel, adaln: AdaLNSingle, *, scan_dtype: torch.dtype | None = None
    ):
        super().__init__(config=backbone.config)
        self.backbone = backbone
        self.adaln = adaln
        self.scan_dtype = scan_dtype
        """The seeded Mamba scans' dtype (``model.denoiser_scan_dtype``); None: activations'."""

    def forward(
        self,
        tokens: torch.Tensor,
        t_tokens: torch.Tensor | None,
        conditioning: Conditioning,
        *,
        causal_in_block: bool = False,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Noisy tokens (b, n·S) with per-token times (b, n·S) → logits (b, n·S, V/TP).

        ``t_tokens=None`` runs every layer unmodulated: ``x + mixer(norm(x))``, the backbone's
        own layer on the denoiser's weights (the released mock-AR decoding).
        With ``positions`` (b, n·S) bool, the final norm and LM head run there only and the
        logits come back as (count, V/TP) in (batch, position) order.
        """
        model = self.backbone
        hidden = embed(model, tokens)  # (s, b, d); (s/TP, b, d) under SP
        t_emb = None
        if t_tokens is not None:
            t_tokens = t_tokens.transpose(0, 1)  # (s, b)
            if self.config.sequence_parallel:
                # Scatter t, then compute t_emb on this rank's positions only: every adaLN
                # gradient is then a partial sum over the local positions, which is what the
                # ``sequence_parallel`` tag tells finalize_model_grads to sum over TP (running
                # the MLPs on the full sequence and scattering their output would give each
                # rank the whole gradient already, and the TP sum would double it).
                t_tokens = tensor_parallel.scatter_to_sequence_parallel_region(t_tokens)
            t_emb = self.adaln(t_tokens)  # (s, b, 3d); (s/TP, b, 3d) under SP
        full_recompute = self.config.recompute_granularity == "full" and torch.is_grad_enabled()
        for i, kind, layer in iter_layers(model):
            run = functools.partial(self._layer, i, kind, layer, conditioning, causal_in_block)
            if full_recompute:
                # Keep only the layer's input; Megatron's checkpoint reruns the layer in backward
                # with the same RNG streams.
                hidden = tensor_parallel.checkpoint(run, False, hidden, t_emb)
            else:
                hidden = run(hidden, t_emb)
        if positions is not None:
            return lm_head_at(model, hidden, positions)
        return lm_head(model, hidden)

    def _layer(self, i, kind, layer, conditioning, causal_in_block, hidden, t_emb):
        """One adaLN-modulated denoiser layer: hidden (s, b, d) → hidden (s, b, d)."""
        norm = pre_norm(kind, layer)
        mod = None if t_emb is None else self.adaln.layer(t_emb, i)
        if mod is None:
            normed = norm(hidden)
        elif kind in (LayerKind.MAMBA, LayerKind.ATTENTION):
            normed = mod.pre_norm(norm, hidden)
        else:
            normed = mod.post_norm(norm, hidden)
        if kind is LayerKind.MAMBA:
            out = mamba_forward(
                layer.mixer,
                normed,
                initial=conditioning.mamba_seed(i),
                blocks=conditioning.blocks,
                scan_dtype=self.scan_dtype,
            ).out
        elif kind is LayerKind.ATTENTION:
            q, k, v = attention_qkv(layer.self_attention, normed)
            attend = functools.partial(conditioning.attend, i, causal_in_block=causal_in_block)
            attended = self._selective("core_attn", attend, q, k, v)
            out = attention_out(layer.self_attention, attended)
        elif kind is LayerKind.MLP:
            out = self._selective("mlp", lambda x: layer.mlp(x)[0], normed)
        elif isinstance(conditioning, CacheConditioning):  # decoding: no dispatcher
            out = moe_decode(layer.mlp, normed)
        else:
            out, _ = layer.mlp(normed)  # MoE: recomputes itself when "moe" is selected
        return hidden + out if mod is None else mod.residual(hidden, out)

    def _selective(self, module: str, function, *args: torch.Tensor) -> torch.Tensor:
        """``function(*args)``, recomputed in backward when ``module`` is one of the selective
        recompute modules (Megatron's names: core_attn, mlp)."""
        config = self.config
        if (
            config.recompute_granularity == "selective"
            and module in config.recompute_modules
            and torch.is_grad_enabled()
        ):
            return tensor_parallel.checkpoint(function, False, *args)
        return function(*args)
