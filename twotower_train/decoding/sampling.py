"""Token choice from logits: temperature, top-k, top-p, and the chosen token's probability.

Shared by every sampler. ``temperature == 0`` is greedy (argmax; deterministic). The returned
confidence is the probability of the chosen token under the filtered, tempered distribution
(for greedy: under the plain softmax), which is what mask-diffusion confidence unmasking ranks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TokenChoice:
    temperature: float = 0.0
    """0 = greedy."""
    top_k: int | None = None
    top_p: float | None = None

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature={self.temperature} must be >= 0")
        if self.top_k is not None and self.top_k <= 0:
            raise ValueError(f"top_k={self.top_k} must be positive")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p={self.top_p} must be in (0, 1]")


def choose_tokens(
    logits: torch.Tensor,
    choice: TokenChoice,
    *,
    forbid: int | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """logits (..., V) → (token ids (...), confidence (...)). ``forbid`` is never chosen."""
    logits = logits.float()
    if forbid is not None:
        logits = logits.clone()
        logits[..., forbid] = float("-inf")
    if choice.temperature == 0:
        probs = logits.softmax(-1)
        confidence, tokens = probs.max(-1)
        return tokens, confidence
    logits = logits / choice.temperature
    if choice.top_k is not None and choice.top_k < logits.shape[-1]:
        kth = logits.topk(choice.top_k, dim=-1).values[..., -1:]  # (..., 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if choice.top_p is not None and choice.top_p < 1:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop_sorted = cumulative - sorted_logits.softmax(-1) >= choice.top_p  # keep the first
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    probs = logits.softmax(-1)
    flat = probs.reshape(-1, probs.shape[-1])
    tokens = torch.multinomial(flat, 1, generator=generator).reshape(probs.shape[:-1])
    confidence = probs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    return tokens, confidence
