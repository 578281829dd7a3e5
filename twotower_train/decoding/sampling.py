"""Token choice from logits: temperature, top-k, top-p, and the chosen token's probability.

``temperature == 0`` is greedy (argmax; deterministic) everywhere.

* :func:`choose_tokens` (AR and mock-AR): a draw from the filtered, tempered softmax.
* :func:`choose_block_tokens` (mask diffusion, the released semantics): the mask token is
  forbidden; greedy argmax, or Gumbel-max over the temperature-scaled log-probs (top-k / top-p
  filter them when given — the released code has no such filter); the confidence that
  unmasking ranks is the chosen token's probability under the **untempered** p(x0|xt), so the
  temperature changes which tokens are drawn but never how confident a given token is.
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


def _filtered(logits: torch.Tensor, choice: TokenChoice) -> torch.Tensor:
    """Tempered logits (..., V) with everything outside top-k / top-p set to −inf."""
    if choice.top_k is not None and choice.top_k < logits.shape[-1]:
        kth = logits.topk(choice.top_k, dim=-1).values[..., -1:]  # (..., 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if choice.top_p is not None and choice.top_p < 1:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop_sorted = cumulative - sorted_logits.softmax(-1) >= choice.top_p  # keep the first
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def choose_tokens(
    logits: torch.Tensor,
    choice: TokenChoice,
    *,
    forbid: int | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """logits (..., V) → (token ids (...), probability of each under the distribution drawn
    from). ``forbid`` is never chosen."""
    logits = logits.float()
    if forbid is not None:
        logits = logits.clone()
        logits[..., forbid] = float("-inf")
    if choice.temperature == 0:
        probs = logits.softmax(-1)
        confidence, tokens = probs.max(-1)
        return tokens, confidence
    probs = _filtered(logits / choice.temperature, choice).softmax(-1)
    flat = probs.reshape(-1, probs.shape[-1])
    tokens = torch.multinomial(flat, 1, generator=generator).reshape(probs.shape[:-1])
    confidence = probs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    return tokens, confidence


def choose_block_tokens(
    logits: torch.Tensor,
    choice: TokenChoice,
    mask_token_id: int,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask diffusion's choice at every block position: logits (b, S, V) → (token ids (b, S),
    confidence (b, S)) as the module docstring says."""
    logits = logits.float().clone()
    logits[..., mask_token_id] = float("-inf")  # p(x0|xt) never proposes [MASK]
    probs = logits.softmax(-1)  # untempered p(x0|xt)
    if choice.temperature == 0:
        confidence, tokens = probs.max(-1)
        return tokens, confidence
    scaled = _filtered(logits / choice.temperature, choice).log_softmax(-1)
    uniform = torch.rand(scaled.shape, generator=generator, device=scaled.device)
    gumbel = -torch.log(-torch.log(uniform.clamp(min=1e-10)))
    tokens = (scaled + gumbel).argmax(-1)
    return tokens, probs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
