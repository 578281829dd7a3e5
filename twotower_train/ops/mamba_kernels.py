"""The GPU Mamba-2 kernels behind the signatures of the pure-torch ops.

Each function here takes exactly the arguments of :func:`twotower_train.ops.ssd.ssd_scan` or
:func:`twotower_train.ops.conv.causal_conv1d` and returns the same things, so
:func:`twotower_train.model.mixers.mamba_forward` can call whichever
:mod:`twotower_train.backends` picks:

* ``ssd_scan_varlen`` — megatron-core's forward-only Triton chunk scan
  (``mamba_chunk_scan_combined_varlen``). The batch is packed into one varlen sequence whose
  chunk boundaries are the union of the chunk grid and the ``state_stride`` grid, so with
  ``return_raw_states=True`` the state after every block is one of the raw chunk states: the
  context tower's block-boundary states in a single launch, no loop over blocks.
* ``ssd_scan_differentiable`` — mamba_ssm's ``mamba_chunk_scan_combined`` (Triton forward and
  backward) with per-sequence ``initial_states``: the denoiser's (batch·blocks, S) scans.
* ``causal_conv1d_cuda`` — Dao-AILab's ``causal_conv1d_fn`` (CUDA, differentiable, seeded).
* ``causal_conv1d_varlen`` — megatron-core's forward-only Triton varlen conv with initial states.

Conv states are gathers of pre-conv inputs (:func:`twotower_train.ops.conv.conv_states`), the
same for every implementation. The kernels are imported on first call, after ``backends`` has
checked that they load.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch

from twotower_train.ops.conv import conv_states
from twotower_train.ops.ssd import NO_DT_LIMIT, SSDOutput

__all__ = [
    "causal_conv1d_cuda",
    "causal_conv1d_varlen",
    "ssd_scan_differentiable",
    "ssd_scan_varlen",
]


def _pow2_at_most(n: int) -> int:
    """Largest power of two ≤ n: the Triton kernels tile a chunk with power-of-two blocks, and
    the chunk length changes only the summation order, never the result."""
    return 1 << (max(n, 1).bit_length() - 1)


def _chunk_starts(seqlen: int, chunk: int, stride: int | None) -> list[int]:
    """Start of every chunk of one sequence: the chunk grid ∪ the block grid, sorted (host-side
    ints: at most seqlen/S + seqlen/Q of them)."""
    starts = set(range(0, seqlen, chunk))
    if stride is not None:
        starts |= set(range(0, seqlen, stride))
    return sorted(starts)


class VarlenLayout(NamedTuple):
    """Index tensors of one packed varlen scan, on the scan's device."""

    chunks: int
    """Chunks per sequence."""
    tile: int
    cu_chunks: torch.Tensor
    """(b·chunks + 1,) int32 chunk boundaries of the packed batch."""
    seq_idx: torch.Tensor
    """(b·chunks,) int32 sequence of each chunk."""
    last_chunk: torch.Tensor
    """(b,) each sequence's last chunk."""
    boundary_chunks: torch.Tensor | None
    """(seqlen / state_stride,) the chunk ending at each block end (with a state stride)."""


@functools.lru_cache(maxsize=256)
def _varlen_layout(
    bsz: int, seqlen: int, chunk: int, stride: int | None, device: torch.device
) -> VarlenLayout:
    """The packed layout for (bsz, seqlen) under ``chunk`` and ``stride``, built once per shape
    and device: its host lists reach the device in one copy per tensor the first time, and
    later calls (every Mamba layer, every decoding step) reuse them — no host→device copy, so
    no host sync, per call (and nothing that breaks CUDA-graph capture)."""
    starts = _chunk_starts(seqlen, chunk, stride)
    ends = starts[1:] + [seqlen]
    nc = len(starts)
    # Tiles as long as the longest chunk, not Q: S=16 blocks under Q=128 need 16-wide tiles.
    # (At least 16, the smallest tile the kernels' dot products take.)
    tile = max(16, 1 << (max(e - s for s, e in zip(starts, ends)) - 1).bit_length())
    packed = [b * seqlen + start for b in range(bsz) for start in starts] + [bsz * seqlen]
    boundary = None
    if stride is not None:
        # raw[c] is the state after chunk c; the block ends k·S are chunk ends by construction.
        chunk_of_end = {end: c for c, end in enumerate(ends)}
        boundary = [chunk_of_end[p] for p in range(stride, seqlen + 1, stride)]
        boundary = torch.tensor(boundary, device=device)
    return VarlenLayout(
        chunks=nc,
        tile=tile,
        cu_chunks=torch.tensor(packed, dtype=torch.int32, device=device),
        seq_idx=torch.arange(bsz, dtype=torch.int32, device=device).repeat_interleave(nc),
        last_chunk=torch.arange(1, bsz + 1, device=device) * nc - 1,
        boundary_chunks=boundary,
    )


def ssd_scan_varlen(
    x,
    dt,
    A,
    B,
    C,
    chunk_size,
    *,
    D=None,
    z=None,
    dt_bias=None,
    dt_softplus=False,
    dt_limit=NO_DT_LIMIT,
    initial_state=None,
    state_stride=None,
) -> SSDOutput:
    """Forward-only :func:`~twotower_train.ops.ssd.ssd_scan` on megatron-core's varlen kernel."""
    from megatron.core.ssm.ops.ssd_combined import mamba_chunk_scan_combined_varlen

    bsz, seqlen, heads, head_dim = x.shape
    groups, d_state = B.shape[-2:]
    if state_stride is not None and seqlen % state_stride:
        raise ValueError(f"state_stride {state_stride} must divide seqlen {seqlen}")
    layout = _varlen_layout(
        bsz, seqlen, _pow2_at_most(min(chunk_size, seqlen)), state_stride, x.device
    )
    nc = layout.chunks
    y = torch.empty(bsz * seqlen, heads, head_dim, device=x.device, dtype=x.dtype)
    final, raw = mamba_chunk_scan_combined_varlen(
        x.reshape(bsz * seqlen, heads, head_dim),  # (b·l, h, p): the batch packed end to end
        dt.reshape(bsz * seqlen, heads),
        A,
        B.reshape(bsz * seqlen, groups, d_state),
        C.reshape(bsz * seqlen, groups, d_state),
        layout.tile,
        layout.cu_chunks,
        layout.last_chunk,
        layout.seq_idx,
        y,
        D=D,
        z=None if z is None else z.reshape(bsz * seqlen, heads, head_dim),
        dt_bias=dt_bias,
        initial_states=None if initial_state is None else initial_state.float().contiguous(),
        dt_softplus=dt_softplus,
        dt_limit=dt_limit,
        return_raw_states=True,
        state_dtype=torch.float32,
    )
    boundary = None
    if state_stride is not None:
        picks = layout.boundary_chunks
        after = raw.reshape(bsz, nc, heads, head_dim, d_state)[:, picks]  # (b, l/S, h, p, n)
        first = (
            torch.zeros_like(final) if initial_state is None else initial_state.float()
        ).unsqueeze(1)  # (b, 1, h, p, n)
        boundary = torch.cat([first, after], dim=1)  # (b, l/S + 1, h, p, n)
    return SSDOutput(
        y=y.reshape(bsz, seqlen, heads, head_dim), final_state=final, boundary_states=boundary
    )


def ssd_scan_differentiable(
    x,
    dt,
    A,
    B,
    C,
    chunk_size,
    *,
    D=None,
    z=None,
    dt_bias=None,
    dt_softplus=False,
    dt_limit=NO_DT_LIMIT,
    initial_state=None,
    state_stride=None,
) -> SSDOutput:
    """:func:`~twotower_train.ops.ssd.ssd_scan` with backward, on mamba_ssm's Triton kernels."""
    from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined

    if state_stride is not None:
        raise NotImplementedError("mamba_ssm's scan returns no block-boundary states")
    y, final = mamba_chunk_scan_combined(
        x,
        dt,
        A,
        B,
        C,
        _pow2_at_most(min(chunk_size, x.shape[1])),
        D=D,
        z=z,
        dt_bias=dt_bias,
        initial_states=initial_state,
        dt_softplus=dt_softplus,
        dt_limit=dt_limit,
        return_final_states=True,
    )
    return SSDOutput(y=y, final_state=final.float())


def causal_conv1d_cuda(
    x,
    weight,
    bias=None,
    *,
    initial_state=None,
    activation="silu",
    state_stride=None,
):
    """:func:`~twotower_train.ops.conv.causal_conv1d` on Dao-AILab's CUDA kernel."""
    from causal_conv1d import causal_conv1d_fn

    # (b, l, d) contiguous viewed as (b, d, l) is the channel-last layout the kernel needs for
    # initial states; (b, w−1, d) states viewed as (b, d, w−1) likewise.
    y = causal_conv1d_fn(
        x.transpose(1, 2),
        weight,
        bias,
        initial_states=None if initial_state is None else initial_state.to(x.dtype).transpose(1, 2),
        activation=activation,
    ).transpose(1, 2)
    return (y, *conv_states(x, initial_state, weight.shape[-1], state_stride))


def causal_conv1d_varlen(
    x,
    weight,
    bias=None,
    *,
    initial_state=None,
    activation="silu",
    state_stride=None,
):
    """Forward-only :func:`~twotower_train.ops.conv.causal_conv1d` on megatron-core's Triton
    varlen conv (the batch packed end to end, one initial state per row)."""
    from megatron.core.ssm.ops.causal_conv1d_varlen import causal_conv1d_varlen_fn

    if activation not in ("silu", "swish"):
        raise NotImplementedError(
            f"megatron's varlen conv applies SiLU; got activation={activation!r}"
        )
    bsz, seqlen, dim = x.shape
    cu_seqlens = torch.arange(0, bsz * seqlen + 1, seqlen, device=x.device, dtype=torch.int32)
    y = causal_conv1d_varlen_fn(
        x.reshape(bsz * seqlen, dim).contiguous(),  # (b·l, d)
        weight.contiguous(),
        bias if bias is not None else weight.new_zeros(dim),
        cu_seqlens,
        initial_states=(
            None
            if initial_state is None
            else initial_state.to(x.dtype).transpose(1, 2).contiguous()  # (b, d, w−1)
        ),
    )
    return (
        y.reshape(bsz, seqlen, dim),
        *conv_states(x, initial_state, weight.shape[-1], state_stride),
    )
