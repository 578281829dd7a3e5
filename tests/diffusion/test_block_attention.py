"""Tests for twotower_train.ops.block_attention (dense vs flex vs an explicit per-block oracle).

Tolerances (fp32): all paths compute the same softmax over the same keys in different
summation orders; differences are a few ulps of O(1) outputs. Measured ~5e-7; 1e-5 leaves
margin while still catching any mask error (a wrong key changes outputs by O(0.1)).
"""

import pytest
import torch

from twotower_train.backends import forced_backend, resolve_backend
from twotower_train.decoding.cache import ContextCache
from twotower_train.model.denoiser import CacheConditioning
from twotower_train.ops.block_attention import (
    AttentionBackend,
    denoiser_attention,
)

TOL = dict(atol=1e-5, rtol=1e-5)


def _qkv(batch, heads, kv_heads, seq_len, dim=16, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, seq_len, dim, generator=g)
    kvs = [torch.randn(batch, kv_heads, seq_len, dim, generator=g) for _ in range(4)]
    return [t.to(device) for t in (q, *kvs)]


def _oracle(q, k_ctx, v_ctx, k_noisy, v_noisy, block_size, causal_in_block):
    """Loop over blocks and queries; softmax over [context < p] ⊕ [own block] explicitly."""
    heads, kv_heads = q.shape[1], k_ctx.shape[1]
    rep = heads // kv_heads
    k_ctx, v_ctx, k_noisy, v_noisy = (
        t.repeat_interleave(rep, dim=1) for t in (k_ctx, v_ctx, k_noisy, v_noisy)
    )
    out = torch.empty_like(q)
    scale = q.shape[-1] ** -0.5
    for i in range(q.shape[2]):
        p = (i // block_size) * block_size
        end = i + 1 if causal_in_block else p + block_size
        k = torch.cat([k_ctx[:, :, :p], k_noisy[:, :, p:end]], dim=2)
        v = torch.cat([v_ctx[:, :, :p], v_noisy[:, :, p:end]], dim=2)
        w = torch.softmax((q[:, :, i : i + 1] @ k.transpose(-1, -2)) * scale, dim=-1)
        out[:, :, i : i + 1] = w @ v
    return out


@pytest.mark.parametrize("causal", [False, True])
def test_dense_matches_explicit_oracle(causal):
    args = _qkv(2, 4, 2, 32)
    dense = denoiser_attention(*args, 8, causal_in_block=causal, backend=AttentionBackend.DENSE)
    torch.testing.assert_close(dense, _oracle(*args, 8, causal), **TOL)


@pytest.mark.parametrize("seq_len", [64, 128])
@pytest.mark.parametrize("block_size", [4, 16])
@pytest.mark.parametrize("causal", [False, True])
def test_flex_matches_dense_gqa(seq_len, block_size, causal):
    args = _qkv(2, 8, 2, seq_len, seed=seq_len + block_size)
    kw = dict(causal_in_block=causal, softmax_scale=0.3)
    dense = denoiser_attention(*args, block_size, backend=AttentionBackend.DENSE, **kw)
    flex = denoiser_attention(*args, block_size, backend=AttentionBackend.FLEX, **kw)
    assert flex.shape == (2, 8, seq_len, 16)
    torch.testing.assert_close(flex, dense, **TOL)


def test_dense_gradients_match_oracle():
    leaves = [t.requires_grad_(True) for t in _qkv(1, 4, 2, 32, seed=3)]
    dense = denoiser_attention(*leaves, 8, backend=AttentionBackend.DENSE)
    g_dense = torch.autograd.grad((dense * dense).sum(), leaves)
    ref = _oracle(*leaves, 8, False)
    g_ref = torch.autograd.grad((ref * ref).sum(), leaves)
    for a, b in zip(g_dense, g_ref, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)  # sums over 2L products


def test_flex_on_cpu_refuses_backward_clearly():
    leaves = [t.requires_grad_(True) for t in _qkv(1, 4, 2, 32)]
    with pytest.raises(NotImplementedError, match="forward-only"):
        denoiser_attention(*leaves, 8, backend=AttentionBackend.FLEX)
    with torch.no_grad():
        denoiser_attention(*leaves, 8, backend=AttentionBackend.FLEX)


def test_auto_is_dense_on_cpu_and_can_be_forced():
    cpu = torch.device("cpu")
    assert resolve_backend(AttentionBackend.AUTO, cpu) is AttentionBackend.DENSE
    assert resolve_backend(AttentionBackend.AUTO, torch.device("cuda")) is AttentionBackend.FLEX
    with forced_backend(AttentionBackend.FLEX):
        assert resolve_backend(AttentionBackend.AUTO, cpu) is AttentionBackend.FLEX
        assert resolve_backend(AttentionBackend.DENSE, cpu) is AttentionBackend.DENSE
    assert resolve_backend(AttentionBackend.AUTO, cpu) is AttentionBackend.DENSE


def test_gqa_head_mismatch_is_an_error():
    q, *kv = _qkv(1, 6, 4, 16)
    with pytest.raises(ValueError, match="multiple of kv_heads"):
        denoiser_attention(q, *kv, 4)


def _decode(q, k_cache, v_cache, k_block, v_block, context_valid=None, causal_in_block=False):
    """The sampler path: the denoiser's attention to a (preallocated) context cache."""
    b, _, length, _ = k_cache.shape
    if context_valid is None:
        context_valid = torch.ones(b, length, dtype=torch.bool)
    cache = ContextCache(keys={0: k_cache}, values={0: v_cache}, valid=context_valid)
    cache = cache.reserve(q.shape[2])
    return CacheConditioning(cache).attend(0, q, k_block, v_block, causal_in_block)


@pytest.mark.parametrize("causal", [False, True])
def test_block_decode_equals_training_rows_with_full_context(causal):
    seq_len, block_size = 64, 16
    q, k_ctx, v_ctx, k_noisy, v_noisy = _qkv(2, 4, 2, seq_len, seed=5)
    full = denoiser_attention(
        q,
        k_ctx,
        v_ctx,
        k_noisy,
        v_noisy,
        block_size,
        causal_in_block=causal,
        backend=AttentionBackend.DENSE,
    )
    for p in range(0, seq_len, block_size):
        blk = slice(p, p + block_size)
        out = _decode(
            q[:, :, blk],
            k_ctx[:, :, :p],
            v_ctx[:, :, :p],
            k_noisy[:, :, blk],
            v_noisy[:, :, blk],
            causal_in_block=causal,
        )
        torch.testing.assert_close(out, full[:, :, blk], **TOL)


def test_block_decode_left_padding_ignores_pad_keys():
    from twotower_train.diffusion.masks import context_valid_from_lengths

    q, k_ctx, v_ctx, k_blk, v_blk = _qkv(2, 4, 2, 8, seed=6)
    k_cache, v_cache = torch.randn(2, 2, 12, 16), torch.randn(2, 2, 12, 16)
    lengths = torch.tensor([5, 12])  # row 0: 7 pad positions on the left
    valid = context_valid_from_lengths(lengths, 12)
    batched = _decode(q, k_cache, v_cache, k_blk, v_blk, context_valid=valid)
    alone = _decode(q[:1], k_cache[:1, :, 7:], v_cache[:1, :, 7:], k_blk[:1], v_blk[:1])
    torch.testing.assert_close(batched[:1], alone, **TOL)
    full = _decode(q[1:], k_cache[1:], v_cache[1:], k_blk[1:], v_blk[1:])
    torch.testing.assert_close(batched[1:], full, **TOL)


@pytest.fixture
def compiled_flex(monkeypatch):
    """tests/conftest.py sets TORCHDYNAMO_DISABLE=1; the fused kernel needs torch.compile."""
    import twotower_train.ops.block_attention as mod

    monkeypatch.delenv("TORCHDYNAMO_DISABLE", raising=False)
    monkeypatch.setattr(mod, "_compiled_flex", None)


@pytest.mark.gpu
@pytest.mark.parametrize("block_size", [16, 32])
def test_compiled_flex_matches_dense_on_cuda(compiled_flex, block_size):
    args = _qkv(2, 8, 2, 1024, dim=64, seed=7, device="cuda")
    dense = denoiser_attention(*args, block_size, backend=AttentionBackend.DENSE)
    flex = denoiser_attention(*args, block_size, backend=AttentionBackend.FLEX)
    torch.testing.assert_close(flex, dense, atol=2e-5, rtol=2e-5)


@pytest.mark.gpu
def test_compiled_flex_gradients_match_dense_on_cuda(compiled_flex):
    leaves = [t.requires_grad_(True) for t in _qkv(1, 8, 2, 512, dim=64, seed=8, device="cuda")]
    grads = {}
    for backend in (AttentionBackend.DENSE, AttentionBackend.FLEX):
        out = denoiser_attention(*leaves, 16, backend=backend)
        grads[backend] = torch.autograd.grad((out * out).sum(), leaves)
    for a, b in zip(grads[AttentionBackend.DENSE], grads[AttentionBackend.FLEX], strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


@pytest.mark.gpu
def test_compiled_flex_does_not_materialise_scores(compiled_flex):
    # L = 16384, 8 heads: a dense fp32 score matrix would be 8 * L * 2L * 4 B = 16 GiB. The fused
    # kernel's working memory is O(L) per head; allow 2% of the dense size.
    seq_len, heads = 16384, 8
    args = _qkv(1, heads, 2, seq_len, dim=64, seed=9, device="cuda")
    denoiser_attention(*args, 16, backend=AttentionBackend.FLEX)  # compile + cache the mask
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    denoiser_attention(*args, 16, backend=AttentionBackend.FLEX)
    extra = torch.cuda.max_memory_allocated() - before
    assert extra < 0.02 * heads * seq_len * 2 * seq_len * 4
