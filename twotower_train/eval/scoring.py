"""Log-likelihood of continuations given contexts, through either tower.

* :func:`score_ar` — the context tower (exact): the prefill of the context predicts the first
  continuation token, one more forward over the continuation (minus its last token) the rest.
* :func:`score_mock_ar` — the denoiser: each continuation token j is predicted as the first
  position of an all-[MASK] query block (mock-AR's input shape, t = 1) after the clean context
  plus continuation tokens < j. The context caches for every j come from ONE context forward
  over the continuation (``position_states``) rolled back to each length, so the cost is one
  denoiser forward per continuation position, batched over requests.

Both take a batch of (context ids, continuation ids) pairs and return (sum of log-probs,
whether every continuation token is the greedy choice) per pair; the mask token is excluded
from the denoiser's distribution, as the samplers never emit it. Any
:class:`~twotower_train.decoding.cache.DecodingModel` works.
"""

from __future__ import annotations

import torch

from twotower_train.decoding.samplers import QUERY_BLOCK_SIZE, left_pad, shifted

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


@torch.no_grad()
def score_mock_ar(
    model,
    pairs: list[Pair],
    mask_id: int,
    pad_id: int = 0,
    query_block_size: int = QUERY_BLOCK_SIZE,
) -> list[tuple[float, bool]]:
    """Denoiser log p(continuation | context) per pair, one [MASK] query per token. A shifted
    denoiser (``denoiser_shift``) leaves the token after the context to the context tower, so
    mock-AR scores are the AR scores (as ``generate_mock_ar`` decodes like ``generate_ar``)."""
    if shifted(model):
        return score_ar(model, pairs, pad_id)
    tokens, valid, continuation, lengths = _prepare(model, pairs, pad_id)
    context = model.prefill(tokens, valid=valid, logits="none").cache
    batch, width = continuation.shape
    advanced = None
    if width > 1:
        advanced = model.advance(context, continuation[:, :-1], logits="none", position_states=True)
    device = model.denoiser_device
    query = torch.full((batch, query_block_size), mask_id, dtype=torch.long, device=device)
    t = torch.ones(batch, device=device)
    limit = torch.tensor(lengths, device=model.context_device) - 1  # (b,) tokens a row can keep
    logits = []
    for j in range(width):
        # The cache after the context + continuation tokens < j (rows shorter than j + 1 keep
        # all theirs; their position j is never read).
        cache = context if j == 0 else advanced.rollback(context, limit.clamp(max=j))
        logits.append(model.denoise_block(cache.to(device), query, t)[:, :1].float())
    logits = torch.cat(logits, dim=1)  # (b, N, V)
    logits[..., mask_id] = float("-inf")
    return _sum(logits.log_softmax(-1), continuation.to(device), lengths)
