"""Masked-token accuracy of the denoiser on held-out (prompt, answer) pairs, and the unigram
baseline it must beat.

For each pair the context tower prefills the prompt; the first ``block_size`` tokens of
answer + EOS form one block in which every position is masked with probability
``mask_ratio`` (at least one); the denoiser predicts the block at t = the block's masked
fraction, as in training, and its argmax (mask token excluded, as the samplers do) is compared
with the true token at the masked positions. A shifted denoiser (``denoiser_shift``) is scored
through ``unmasking.block_logits`` on the masked positions after the block's first, which the
context tower predicts. The unigram baseline predicts, at every masked
position, the most frequent token of a reference token stream (the training answers): what a
denoiser that ignored its context and the visible tokens would score at best.
"""

from __future__ import annotations

from collections import Counter

import torch

from twotower_train.decoding.batching import left_pad
from twotower_train.decoding.unmasking import block_logits, shifted
from twotower_train.diffusion import shifted_loss_positions


def answer_blocks(prompts, answers, eos_token_id: int, block_size: int):
    """(prompts, target blocks) of the pairs whose answer + EOS fills a whole block."""
    kept = [
        (p, (a + [eos_token_id])[:block_size])
        for p, a in zip(prompts, answers)
        if len(a) + 1 >= block_size
    ]
    return [p for p, _ in kept], [b for _, b in kept]


@torch.no_grad()
def masked_token_accuracy(
    model,
    prompts: list[list[int]],
    blocks: list[list[int]],
    *,
    mask_token_id: int,
    pad_token_id: int,
    mask_ratio: float = 0.5,
    seed: int = 0,
    batch: int = 16,
) -> dict:
    """``{"accuracy", "masked", "targets"}``: argmax accuracy over masked positions, their
    count, and the true tokens at those positions (for :func:`unigram_accuracy`)."""
    gen = torch.Generator().manual_seed(seed)
    correct, masked_total, targets = 0, 0, []
    shift = shifted(model)
    first_scored = 1 if shift else 0  # a shifted denoiser leaves position 0 to the context tower
    for first in range(0, len(prompts), batch):
        truth = torch.tensor(blocks[first : first + batch])  # (b, S)
        masked = torch.rand(truth.shape, generator=gen) < mask_ratio
        masked[
            torch.arange(len(truth)),
            torch.randint(first_scored, truth.shape[1], (len(truth),), generator=gen),
        ] = True  # ≥ 1 per row
        tokens, valid = left_pad(prompts[first : first + batch], pad_token_id, model.context_device)
        prefill = model.prefill(tokens, valid=valid, logits="last" if shift else "none")
        block = torch.where(masked, torch.full_like(truth, mask_token_id), truth)
        t = masked.float().mean(-1)  # (b,)
        device = model.denoiser_device
        context_logits = None if prefill.logits is None else prefill.logits.to(device)
        logits = (
            block_logits(
                model, prefill.cache.to(device), block.to(device), t.to(device), context_logits
            )
            .float()
            .cpu()
        )
        logits[..., mask_token_id] = float("-inf")
        predicted = logits.argmax(-1)  # (b, S)
        scored = shifted_loss_positions(masked, truth.shape[1])[0] if shift else masked
        correct += int((predicted == truth)[scored].sum())
        masked_total += int(scored.sum())
        targets += truth[scored].tolist()
    return {"accuracy": correct / masked_total, "masked": masked_total, "targets": targets}


def unigram_accuracy(reference_tokens, targets) -> dict:
    """Accuracy of always predicting ``reference_tokens``' most frequent token on ``targets``."""
    token, _ = Counter(reference_tokens).most_common(1)[0]
    return {"token": token, "accuracy": sum(t == token for t in targets) / len(targets)}
