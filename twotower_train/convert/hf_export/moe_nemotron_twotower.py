"""A ``NemotronHMoE`` forward without the per-expert Python loop (part of the Nemotron-TwoTower
export; see ``modeling_nemotron_twotower.py``).

transformers' eager ``NemotronHExperts`` loops over the experts a batch touches, finding each
one's tokens with ``nonzero`` / ``where`` — a host sync and a data-dependent shape per expert (a
16-token block at Nano scale touches ~69 of 128 experts). :func:`moe_forward` computes the same
output with a fixed number of ops and no host sync: the module's own router (sigmoid scores,
``e_score_correction_bias``, group-limited top-k, ``norm_topk_prob``, ``routed_scaling_factor``),
then the chosen experts of every (token, k) pair as one grouped GEMM per projection
(``grouped_mm`` over the pairs sorted by expert, group ends computed on the device) — or, where
``grouped_mm`` cannot run (no kernel for the device, or a non-bf16 dtype under ``torch.compile``),
as batched matmuls over the gathered weights of the chosen experts — then the shared experts.

Layouts: hidden states (b, s, d) or (tokens, d); expert weights as transformers stores them,
``up_proj`` (experts, ffn, d') and ``down_proj`` (experts, d', ffn) with d' the latent size
(``moe_latent_size``) or d.
"""

import torch
import torch.nn.functional as F
from torch import nn


def moe_forward(moe: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """``moe(hidden)`` for a ``NemotronHMoE``: routed experts + shared experts, hidden (…, d) →
    (…, d), with no host sync and no data-dependent shape."""
    flat = hidden.reshape(-1, hidden.shape[-1])  # (T, d)
    # The router module itself, so that its hooks run (router-logit capture, experts counts).
    _, weights, chosen = moe.gate(flat)  # (T, k) fp32 routing weights, (T, k) expert ids
    routed = moe.fc2_latent_proj(
        routed_experts(moe.experts, moe.fc1_latent_proj(flat), chosen, weights)
    )
    return routed.view(hidden.shape) + moe.shared_experts(hidden)


def routed_experts(
    experts: nn.Module, x: torch.Tensor, chosen: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """Σ_k weights[t, k] · expert_{chosen[t, k]}(x[t]) for x (T, d'), chosen / weights (T, k)
    → (T, d'); an expert is down(act(up(x))) with ``experts.up_proj`` / ``down_proj``."""
    tokens, top_k = chosen.shape
    up, down = experts.up_proj, experts.down_proj  # (E, ffn, d'), (E, d', ffn)
    ids = chosen.reshape(-1)  # (S,) with S = T·k: pair j is token j // k, choice j % k
    if grouped_mm_supported(up):
        ids, order = torch.sort(ids)  # pairs grouped by expert
        # Group ends: pairs with expert ≤ e, for every e — on the device, of fixed shape (E,).
        ends = torch.searchsorted(ids, torch.arange(up.shape[0], device=ids.device), right=True)
        ends = ends.to(torch.int32)
        rows = x[order // top_k]  # (S, d'): each pair's token, in expert order
        mid = experts.act_fn(_grouped_mm(rows, up.transpose(1, 2), ends))  # (S, ffn)
        out = torch.empty_like(rows).index_copy_(
            0, order, _grouped_mm(mid, down.transpose(1, 2), ends)
        )
    else:
        rows = x.unsqueeze(1).expand(tokens, top_k, x.shape[-1]).reshape(-1, x.shape[-1])  # (S, d')
        mid = experts.act_fn(torch.bmm(up[ids], rows.unsqueeze(-1)))  # (S, ffn, 1)
        out = torch.bmm(down[ids], mid).squeeze(-1)  # (S, d'), in pair order
    weighted = out.view(tokens, top_k, -1) * weights.unsqueeze(-1)  # (T, k, d'), routing dtype
    return weighted.sum(dim=1).to(x.dtype)


def grouped_mm_supported(weight: torch.Tensor) -> bool:
    """Whether ``grouped_mm`` runs for these operands: CUDA from compute capability 8.0, the
    CPU from torch 2.10 (16-byte aligned weights; the rows are fresh tensors); under ``torch.compile`` only in bf16 (the
    op's meta kernel rejects other dtypes)."""
    device = weight.device
    if torch.compiler.is_compiling():
        return device.type == "cuda" and weight.dtype == torch.bfloat16 and _cuda_grouped_mm(device)
    if device.type == "cuda":
        return _cuda_grouped_mm(device)
    if device.type == "cpu" and hasattr(F, "grouped_mm"):
        return weight.data_ptr() % 16 == 0
    return False


def _cuda_grouped_mm(device: torch.device) -> bool:
    has_op = hasattr(F, "grouped_mm") or hasattr(torch, "_grouped_mm")
    return has_op and torch.cuda.get_device_capability(device) >= (8, 0)


def _grouped_mm(x: torch.Tensor, weight: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
    """Rows x[ends[e − 1]:ends[e]] (grouped by expert) times weight[e] (E, in, out) → (S, out)."""
    op = F.grouped_mm if hasattr(F, "grouped_mm") else torch._grouped_mm
    return op(x.to(weight.dtype), weight, offs=ends)
