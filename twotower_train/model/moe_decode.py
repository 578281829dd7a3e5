"""MoE layers while decoding: Megatron's router, then the chosen experts without a dispatcher.

Megatron's ``MoELayer`` permutes tokens by expert, reads the per-expert token counts back to the
host (``tokens_per_expert.tolist()``) and loops over the local experts: a host sync and a
Python loop per layer per forward, built for thousands of tokens across expert-parallel ranks.
Decoding runs 1 token (an AR step) or one block (16) per forward on one rank, where that
overhead is most of the layer's cost and breaks ``torch.compile``'s graphs. Here the layer's
own router (``mlp.router``: gating, score function, expert bias, groups, scaling — Megatron's
code) picks the experts, and the experts run as two batched matmuls over stacked weights:
every expert for every token when there are at most as many experts as (token, choice) pairs,
else only the k chosen experts per token (their weights gathered). No host read, no loop.

Layers this does not cover fall back to ``mlp(hidden)``: tensor or expert parallelism (the
weights of one expert are split, or experts live on other ranks), grouped-GEMM experts,
latent MoE, token dropping, probabilities applied on the input, biased expert linears.
"""

from __future__ import annotations

import torch
from megatron.core.transformer.moe.experts import SequentialMLP
from megatron.core.transformer.moe.moe_layer import MoELayer


def _supported(mlp: torch.nn.Module) -> bool:
    config = getattr(mlp, "config", None)
    return (
        isinstance(mlp, MoELayer)
        and isinstance(mlp.experts, SequentialMLP)
        and mlp.experts.num_local_experts == config.num_moe_experts
        and config.tensor_model_parallel_size == 1
        and config.expert_tensor_parallel_size in (None, 1)
        and not config.add_bias_linear
        and not config.moe_apply_probs_on_input
        and config.moe_expert_capacity_factor is None
        and getattr(config, "moe_latent_size", None) is None
    )


def _stacked(experts: SequentialMLP) -> tuple[torch.Tensor, torch.Tensor]:
    """(fc1 (E, F, d), fc2 (E, d, F)) stacked once and kept until a weight changes (its
    storage or version: an optimizer step, a load)."""
    weights = [(e.linear_fc1.weight, e.linear_fc2.weight) for e in experts.local_experts]
    cached = experts.__dict__.get("_decode_stack")
    if torch.compiler.is_compiling():
        # Storage pointers cannot be traced. Every generation's prefill runs eager and
        # refreshes the stack first, so the compiled steps after it read a current one.
        if cached is not None:
            return cached[1], cached[2]
        return torch.stack([w1 for w1, _ in weights]), torch.stack([w2 for _, w2 in weights])
    key = tuple((w.data_ptr(), w._version) for pair in weights for w in pair)
    if cached is None or cached[0] != key:
        fc1 = torch.stack([w1 for w1, _ in weights]).detach()
        fc2 = torch.stack([w2 for _, w2 in weights]).detach()
        cached = (key, fc1, fc2)
        experts.__dict__["_decode_stack"] = cached
    return cached[1], cached[2]


def _activate(mlp: MoELayer, h: torch.Tensor) -> torch.Tensor:
    config = mlp.config
    act = mlp.experts.local_experts[0].activation_func
    if config.gated_linear_unit:  # Megatron's GLU: act(first half) · second half
        gate, up = h.chunk(2, dim=-1)
        return act(gate) * up
    return act(h)


def moe_decode(mlp: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """The MoE (or dense MLP) layer's output for ``hidden`` (s, b, d), as ``mlp(hidden)[0]``."""
    if not _supported(mlp):
        return mlp(hidden)[0]
    probs, _ = mlp.router(hidden)  # (T, E): the chosen experts' weights, 0 elsewhere
    x = hidden.reshape(-1, hidden.shape[-1])  # (T, d)
    fc1, fc2 = _stacked(mlp.experts)
    tokens, experts = probs.shape
    k = mlp.config.moe_router_topk
    if experts <= tokens * k:  # every expert on every token: fewer matmul launches than a gather
        h = _activate(mlp, torch.einsum("td,efd->tef", x, fc1))
        y = torch.einsum("tef,edf->ted", h, fc2)
        out = torch.einsum("ted,te->td", y, probs.to(y.dtype))
    else:  # the k chosen experts per token (their weights gathered: reads only those)
        weights, chosen = probs.topk(k, dim=-1)  # (T, k)
        h = _activate(mlp, torch.einsum("td,tkfd->tkf", x, fc1[chosen]))
        y = torch.einsum("tkf,tkdf->tkd", h, fc2[chosen])
        out = torch.einsum("tkd,tk->td", y, weights.to(y.dtype))
    out = out.reshape(hidden.shape)
    if mlp.shared_experts is not None:
        out = out + mlp.shared_experts(hidden)
    return out
