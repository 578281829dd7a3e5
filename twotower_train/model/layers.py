"""Walking a Megatron ``HybridModel`` layer by layer (shared by both towers).

Both towers run the backbone's own modules (embedding, per-layer norms and mixers, final norm,
LM head) but step through the stack themselves, because each layer has to hand state to (or take
state from) the other tower. This module names the layer kinds and the embedding/head steps
(the head over every position, or over selected positions only).
"""

from __future__ import annotations

import enum
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from megatron.core import tensor_parallel
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


def lm_head_at(model: HybridModel, hidden: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Final norm + LM head at ``positions`` only: hidden (s, b, d), positions (b, s) bool →
    vocab-parallel logits (n, V/TP) for the n selected positions in (batch, position) order.

    Only the positions that carry loss pay for the head (the denoiser's masked ones). Under
    sequence parallelism the head's input must be sequence-sharded: the selected rows are taken
    from the gathered sequence (identical on every TP rank, so its backward only splits) and
    padded to a multiple of TP before they are sharded again.
    """
    config = model.config
    if config.sequence_parallel:
        hidden = tensor_parallel.gather_from_sequence_parallel_region(
            hidden, tensor_parallel_output_grad=False
        )  # (s, b, d) on every TP rank
    selected = hidden.transpose(0, 1)[positions]  # (n, d) in (b, s) order
    count = selected.shape[0]
    if config.sequence_parallel:
        tp = config.tensor_model_parallel_size
        selected = F.pad(selected, (0, 0, 0, -count % tp))  # (n rounded up to TP, d)
        selected = tensor_parallel.scatter_to_sequence_parallel_region(selected)
    return lm_head(model, selected.unsqueeze(1))[0, :count]  # (1, n, V/TP) → (n, V/TP)
