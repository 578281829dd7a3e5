"""The packed layout of megatron-core's varlen SSD scan (``ops.mamba_kernels``), checked without
running the kernel: its chunk boundaries against hand-worked values, and built once per shape
and device (a call reuses the tensors instead of copying host lists to the device)."""

from __future__ import annotations

import torch

from twotower_train.ops.mamba_kernels import _varlen_layout


def test_layout_of_two_sequences_with_block_boundaries():
    # seqlen 48, chunk 32, block stride 16: chunks start at {0, 32} ∪ {0, 16, 32} = 0, 16, 32.
    layout = _varlen_layout(2, 48, 32, 16, torch.device("cpu"))
    assert layout.chunks == 3 and layout.tile == 16
    assert layout.cu_chunks.tolist() == [0, 16, 32, 48, 64, 80, 96]
    assert layout.cu_chunks.dtype == torch.int32 and layout.seq_idx.dtype == torch.int32
    assert layout.seq_idx.tolist() == [0, 0, 0, 1, 1, 1]
    assert layout.last_chunk.tolist() == [2, 5]
    assert layout.boundary_chunks.tolist() == [0, 1, 2]  # block ends 16, 32, 48


def test_layout_without_stride_and_uneven_chunks():
    # seqlen 40, chunk 16, no stride: chunks 0-16, 16-32, 32-40; tiles as long as the longest.
    layout = _varlen_layout(1, 40, 16, None, torch.device("cpu"))
    assert layout.cu_chunks.tolist() == [0, 16, 32, 40]
    assert layout.last_chunk.tolist() == [2] and layout.boundary_chunks is None
    assert _varlen_layout(1, 40, 16, None, torch.device("cpu")) is layout  # built once
    assert _varlen_layout(3, 40, 16, None, torch.device("cpu")) is not layout
