"""Log-likelihood of continuations given contexts, through either tower.

* :func:`score_ar` — the context tower (exact): the prefill of the context predicts the first
  continuation token, one more forward over the continuation (minus its last token) the rest.
* :func:`score_mock_ar` — the denoiser as the released mock-AR decodes
  (:func:`~twotower_train.decoding.samplers.generate_mock_ar`): token p is predicted by the
  unmodulated denoiser (t = None) run on token p − 1 with the context cache of the positions
  before it. The context tower runs twice (the context minus its last token; then that token
  and the continuation minus its last, keeping the Mamba states after every position); ONE
  denoiser forward then scores every continuation token of every pair, as a batch of one-token
  rows, row (pair, j) with the K/V of its first positions and the states before its token.
  Whatever the model's ``denoiser_shift``, these are the denoiser's scores, never the AR tower's.
  Memory: the attention K/V are repeated per row, b · N copies of (context + N) positions for
  b pairs of continuations up to N tokens (lm-eval batches of long rolling windows add up).

Both take a batch of (context ids, continuation ids) pairs and return (sum of log-probs over
the full vocabulary, whether every continuation token is the greedy choice) per pair. Any
:class:`~twotower_train.decoding.interface.DecodingModel` works.
"""

from __future__ import annotations

import torch

from twotower_train.decoding.cache import ContextCache, MambaStates
from twotower_train.decoding.samplers import left_pad

Pair = tuple[list[int], list[int]]


def _prepare(model, pairs: list[Pair], pad_id: int):
    """Prefill the contexts (left-padded) → (prefill output, continuation tokens (b, N) right-
    padded with their lengths)."""
    if any(not ctx or not cont for ctx, cont in pairs):
        raise ValueError("every pair needs a non-empty context and continuation")
    tokens, valid = left_pad([ctx for ctx, _ in pairs], pad_id, model.context_device)
    lengths = [len(cont) for _, cont in pairs]
    width = max(lengths)
    continuation = torch.full((len(pairs), width), pad_id, dtype=torch.long)
    for row, (_, cont) in enumerate(pairs):
        continuation[row, : len(cont)] = torch.tensor(cont, dtype=torch.long)
    return tokens, valid, continuation.to(model.context_device), lengths


def _sum(logprobs: torch.Tensor, continuation: torch.Tensor, lengths: list[int]):
    """logprobs (b, N, V) predicting continuation (b, N) → [(sum, greedy)] over each row's
    first lengths[r] positions."""
    target = logprobs.gather(-1, continuation.unsqueeze(-1)).squeeze(-1)  # (b, N)
    greedy = logprobs.argmax(-1) == continuation  # (b, N)
    return [(float(target[r, :n].sum()), bool(greedy[r, :n].all())) for r, n in enumerate(lengths)]


@torch.no_grad()
def score_ar(model, pairs: list[Pair], pad_id: int = 0) -> list[tuple[float, bool]]:
    """Context-tower log p(continuation | context) per pair (module docstring)."""
    tokens, valid, continuation, lengths = _prepare(model, pairs, pad_id)
    out = model.prefill(tokens, valid=valid, logits="last")
    logits = [out.logits]  # (b, 1, V): predicts continuation token 0
    if continuation.shape[1] > 1:
        # Positions ≥ a row's length are right padding: computed, never read.
        logits.append(model.advance(out.cache, continuation[:, :-1], logits="all").logits)
    logprobs = torch.cat(logits, dim=1).float().log_softmax(-1)  # (b, N, V)
    return _sum(logprobs, continuation, lengths)


def _prefix_and_queries(tokens, valid, continuation, pad_id: int):
    """The context minus its last token (one padding column when it is empty) and mock-AR's
    query tokens (b, N): the context's last token, then the continuation minus its last."""
    if tokens.shape[1] == 1:
        tokens = torch.cat([torch.full_like(tokens, pad_id), tokens], dim=1)
        valid = torch.cat([torch.zeros_like(valid), valid], dim=1)
    queries = torch.cat([tokens[:, -1:], continuation[:, :-1]], dim=1)
    return tokens[:, :-1], valid[:, :-1], queries


@torch.no_grad()
def score_mock_ar(model, pairs: list[Pair], pad_id: int = 0) -> list[tuple[float, bool]]:
    """The released mock-AR's log p(continuation | context) per pair (module docstring): every
    continuation token of every pair in ONE denoiser forward over (pairs × tokens) one-token rows,
    each with its own context cache one position short."""
    tokens, valid, continuation, lengths = _prepare(model, pairs, pad_id)
    prefix, prefix_valid, queries = _prefix_and_queries(tokens, valid, continuation, pad_id)
    short = model.prefill(prefix, valid=prefix_valid, logits="none").cache  # (b, W) positions
    out = model.advance(short, queries, logits="none", position_states=True)
    batch, width, known = queries.shape[0], queries.shape[1], prefix.shape[1]
    # Query j of a row reads the cache of its first known + j positions: K/V masked beyond them,
    # the Mamba states after position known + j − 1 (the prefill's own for j = 0).
    length = known + width - 1  # the last query reads no position of its own
    seen = torch.arange(length, device=short.valid.device) < (
        known + torch.arange(width, device=short.valid.device)
    ).unsqueeze(-1)  # (N, length)
    rows = ContextCache(valid=(out.cache.valid[:, None, :length] & seen).flatten(0, 1))
    for i, k in out.cache.keys.items():  # (b, kv, total, hd) → (b·N, kv, length, hd)
        rows.keys[i] = k[:, None, :, :length].expand(-1, width, -1, -1, -1).flatten(0, 1)
        rows.values[i] = out.cache.values[i][:, None, :, :length]
        rows.values[i] = rows.values[i].expand(-1, width, -1, -1, -1).flatten(0, 1)
    for i, before in short.mamba.items():
        after = out.position_states[i]  # (b, N, …) states after each query position
        conv, ssm = (
            torch.cat([b.unsqueeze(1).to(a.dtype), a[:, : width - 1]], dim=1).flatten(0, 1)
            for b, a in ((before.conv, after.conv), (before.ssm, after.ssm))
        )
        rows.mamba[i] = MambaStates(conv=conv, ssm=ssm)
    device = model.denoiser_device
    logits = model.denoise_block(rows.to(device), queries.reshape(-1, 1).to(device), None)
    logprobs = logits.float().reshape(batch, width, -1).log_softmax(-1)  # (b, N, V)
    return _sum(logprobs, continuation.to(device), lengths)
