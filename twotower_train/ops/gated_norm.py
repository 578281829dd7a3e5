"""Gated grouped RMSNorm for the Mamba-2 mixer output, in pure PyTorch.

Drop-in for mamba_ssm's `RMSNormGated` (same constructor) and for megatron's `ExtendedRMSNorm`
(same `sharded_state_dict`). Numerics follow transformers' NemotronH gated norm, which our
backbone must reproduce: normalise in fp32, cast back to the input dtype, then scale by
`weight`. (mamba_ssm scales before the cast; in fp32 the two are identical.)
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["GatedRMSNorm", "gated_rms_norm"]


def gated_rms_norm(x, weight, z=None, eps=1e-5, group_size=None, norm_before_gate=True):
    """norm_before_gate: RMSNorm(x)·silu(z); otherwise RMSNorm(x·silu(z)). RMS is taken over
    consecutive groups of `group_size` channels (None = all channels)."""
    input_dtype = x.dtype
    h = x.float()
    if z is not None and not norm_before_gate:
        h = h * F.silu(z.float())
    d = h.shape[-1]
    gs = d if group_size is None else group_size
    assert d % gs == 0, f"hidden size {d} not divisible by group_size {gs}"
    hg = h.view(*h.shape[:-1], d // gs, gs)  # (..., groups, group_size)
    hg = hg * torch.rsqrt(hg.pow(2).mean(-1, keepdim=True) + eps)
    h = hg.view(*h.shape)
    if z is not None and norm_before_gate:
        h = h * F.silu(z.float())
    return weight * h.to(input_dtype)


class GatedRMSNorm(nn.Module):
    """RMSNormGated(hidden_size, eps, group_size, norm_before_gate) with a TP-sharded state dict."""

    def __init__(
        self, hidden_size, eps=1e-5, group_size=None, norm_before_gate=True, device=None, dtype=None
    ):
        super().__init__()
        self.eps = eps
        self.group_size = group_size
        self.norm_before_gate = norm_before_gate
        self.weight = nn.Parameter(torch.empty(hidden_size, device=device, dtype=dtype))
        # mamba_ssm's module exposes `bias = None`; keep the attribute for drop-in use
        self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self):
        nn.init.ones_(self.weight)

    def forward(self, x: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        return gated_rms_norm(
            x,
            self.weight,
            z=z,
            eps=self.eps,
            group_size=self.group_size,
            norm_before_gate=self.norm_before_gate,
        )

    def sharded_state_dict(self, prefix="", sharded_offsets=(), metadata=None):
        """`weight` is split along dim 0 across tensor-parallel ranks (like ExtendedRMSNorm)."""
        from megatron.core import parallel_state
        from megatron.core.transformer.utils import (
            ensure_metadata_has_dp_cp_group,
            make_sharded_tensors_for_checkpoint,
        )

        metadata = ensure_metadata_has_dp_cp_group(metadata)
        # MambaMixer sets tp_group on its norm; fall back to the global TP group otherwise
        tp_group = getattr(self, "tp_group", None)
        if tp_group is None:
            tp_group = parallel_state.get_tensor_model_parallel_group()
        state_dict = self.state_dict(prefix="", keep_vars=True)
        return make_sharded_tensors_for_checkpoint(
            state_dict,
            prefix,
            {"weight": 0},
            sharded_offsets,
            tp_group=tp_group,
            dp_cp_group=metadata["dp_cp_group"],
        )
