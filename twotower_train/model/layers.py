"""Walking a Megatron ``HybridModel`` layer by layer (shared by both towers).

Both towers run the backbone's own modules (embedding, per-layer norms and mixers, final norm,
LM head) but step through the stack themselves, because each layer has to hand state to (or take
state from) the other tower. This module names the layer kinds and the embedding/head steps.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator

import torch
from megatron.core.models.hybrid.hybrid_model import HybridModel


class LayerKind(enum.Enum):
    MAMBA = "M"
    ATTENTION = "*"
    MOE = "E"
    MLP = "-"


def iter_layers(model: HybridModel) -> Iterator[tuple[int, LayerKind, torch.nn.Module]]:
    """(index, kind, layer) for every layer of the stack, in order."""
    for index, (symbol, layer) in enumerate(
        zip(model.decoder.layer_type_list, model.decoder.layers)
    ):
        yield index, LayerKind(symbol), layer


def pre_norm(kind: LayerKind, layer: torch.nn.Module):
    """The layer's input norm (an IdentityOp where Transformer Engine fuses it into the first
    projection, which then normalises by itself)."""
    if kind is LayerKind.MAMBA:
        return layer.norm
    if kind is LayerKind.ATTENTION:
        return layer.input_layernorm
    return layer.pre_mlp_layernorm


def embed(model: HybridModel, tokens: torch.Tensor) -> torch.Tensor:
    """Token ids (b, s) → hidden states (s, b, d) (sequence-sharded under SP)."""
    return model.embedding(input_ids=tokens, position_ids=None)


def lm_head(model: HybridModel, hidden: torch.Tensor) -> torch.Tensor:
    """Final norm + untied LM head: (s, b, d) → vocab-parallel logits (b, s, V/TP)."""
    logits, _ = model.output_layer(model.decoder.final_norm(hidden))
    return logits.transpose(0, 1).contiguous()  # (b, s, V/TP), as HybridModel returns it
