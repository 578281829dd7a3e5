"""What every sampler shares: the common config, prompts left-padded into one batch, the
per-row collector of new tokens, and the :class:`Generation` statistics.

Torch-only, like its siblings (the Hugging Face export ships it verbatim).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable  # noqa: UP035  (the export's copies import only what tests/inference/test_samplers.py allows)

import torch

from .sampling import TokenChoice

OnCommit = Callable[[int, list[int], list[int]], bool]
"""``on_commit(row, new_tokens, row_tokens) -> bool``: called after each committed block for
every row that gained tokens (``row_tokens`` is everything the row generated so far); returning
True ends that row (stop sequences)."""


@dataclass
class DecodeConfig:
    """What every sampler takes."""

    max_new_tokens: int = 128
    choice: TokenChoice = field(default_factory=TokenChoice)
    """Temperature / top-k / top-p; greedy by default."""
    eos_token_id: int | None = None
    pad_token_id: int = 0
    """Left padding of prompts of different lengths."""
    compile: bool = False
    """Run the model's decoding forwards under ``torch.compile`` (:mod:`.compiled`)."""

    def __post_init__(self) -> None:
        if self.max_new_tokens <= 0:
            raise ValueError(f"max_new_tokens={self.max_new_tokens} must be positive")


@dataclass
class Generation:
    """New tokens per prompt and what they cost.

    Forwards are counted twice: batched calls (``*_forwards``: one per batch step, whatever the
    batch holds) and row forwards (``row_*_forwards``: per forward, the rows it computed for a
    row still generating). Finished rows leave the batch, and inside a diffusion block a row
    whose block is settled stops counting, so a row is charged only for the forwards it
    needed. Rates per row use row forwards (``tokens_per_forward``, the card's figure); rates
    per batch step use batched ones (``tokens_per_batch_forward``, what wall-clock follows).

    ``context_tokens``: tokens the context tower chose, not the denoiser — a shifted
    denoiser's first position of each block, scored by the context tower's last logits.
    :attr:`denoiser_tokens_per_forward` leaves them out.
    """

    tokens: list[list[int]]
    """New tokens per prompt (up to and including EOS)."""
    denoiser_forwards: int = 0
    context_forwards: int = 0
    """Batched context-tower forwards, the prefill included."""
    row_denoiser_forwards: int = 0
    row_context_forwards: int = 0
    context_tokens: int = 0

    @property
    def generated(self) -> int:
        return sum(len(row) for row in self.tokens)

    @property
    def tokens_per_forward(self) -> float:
        """Generated tokens per denoiser forward of a row: 1.0 for mock-AR, up to S for mask
        diffusion (the card's "tokens / step")."""
        forwards = self.row_denoiser_forwards
        return self.generated / forwards if forwards else math.nan

    @property
    def tokens_per_batch_forward(self) -> float:
        """Generated tokens (all rows) per batched denoiser forward: per batch step."""
        forwards = self.denoiser_forwards
        return self.generated / forwards if forwards else math.nan

    @property
    def denoiser_tokens_per_forward(self) -> float:
        """Tokens the denoiser chose per denoiser forward of a row (``context_tokens`` apart)."""
        forwards = self.row_denoiser_forwards
        return (self.generated - self.context_tokens) / forwards if forwards else math.nan

    @property
    def tokens_per_context_forward(self) -> float:
        """Generated tokens per context-tower forward of a row, the prefill included (AR: 1.0)."""
        forwards = self.row_context_forwards
        return self.generated / forwards if forwards else math.nan

    @property
    def tokens_per_model_forward(self) -> float:
        """Generated tokens per (context + denoiser) forward of a row, the prefill included."""
        forwards = self.row_context_forwards + self.row_denoiser_forwards
        return self.generated / forwards if forwards else math.nan


def left_pad(
    prompts: list[list[int]], pad_id: int, device=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts of different lengths → (tokens (b, P), valid (b, P)), left-padded."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    width = max(len(p) for p in prompts)
    tokens = torch.full((len(prompts), width), pad_id, dtype=torch.long, device=device)
    valid = torch.zeros(len(prompts), width, dtype=torch.bool, device=device)
    for row, prompt in enumerate(prompts):
        tokens[row, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
        valid[row, width - len(prompt) :] = True
    return tokens, valid


class Collector:
    """Collects new tokens per row; a row ends at its first EOS, at ``max_new`` tokens, or when
    ``on_commit`` says so.

    Finished rows leave the batch: ``live`` lists the prompts (by index) the samplers' batch
    still holds, in order; :meth:`extend` and :meth:`remaining` speak of those rows, and
    :meth:`leave` drops the finished ones (the samplers then select the same rows of their
    tensors), so no forward runs for a row whose output is complete."""

    def __init__(self, batch: int, max_new: int, eos: int | None, on_commit: OnCommit | None):
        self.rows: list[list[int]] = [[] for _ in range(batch)]
        self.done = [False] * batch
        self.live = list(range(batch))
        self.max_new, self.eos, self.on_commit = max_new, eos, on_commit

    def leave(self, device) -> torch.Tensor | None:
        """Drop the finished rows from ``live`` → the batch positions that stay, a long index
        on ``device`` (None when all do, so nothing needs selecting)."""
        stay = [i for i, row in enumerate(self.live) if not self.done[row]]
        if len(stay) == len(self.live):
            return None
        self.live = [self.live[i] for i in stay]
        return torch.tensor(stay, device=device)

    def extend(self, new: list[list[int]]) -> list[int]:
        """``new``: tokens per row of the current batch (``live``) → how many each row kept."""
        gained = []
        for row, ids in zip(self.live, new):
            gained.append(0)
            if self.done[row]:
                continue
            start = len(self.rows[row])
            for token in ids:
                self.rows[row].append(token)
                if token == self.eos or len(self.rows[row]) >= self.max_new:
                    self.done[row] = True
                    break
            added = self.rows[row][start:]
            gained[-1] = len(added)
            if added and self.on_commit is not None and self.on_commit(row, added, self.rows[row]):
                self.done[row] = True
        return gained

    def remaining(self, device) -> torch.Tensor:
        """(b,) tokens each row may still add (0 once it is done)."""
        return torch.tensor(
            [0 if self.done[r] else self.max_new - len(self.rows[r]) for r in self.live],
            dtype=torch.long,
            device=device,
        )

    @property
    def active(self) -> int:
        return self.done.count(False)

    @property
    def finished(self) -> bool:
        return all(self.done)


def static_caches(model) -> bool:
    """Whether ``model`` decodes on static caches (a compiled view, :mod:`.compiled`)."""
    return bool(getattr(model, "static_caches", False))


def prefill_prompts(
    model,
    prompts: list[list[int]],
    config: DecodeConfig,
    logits: str,
    on_commit: OnCommit | None,
    stats_type: type[Generation] = Generation,
):
    """Left-pad the prompts and prefill the context tower → (collector, stats, prefill).

    The prefill's cache gets room for every new token and one block more
    (:meth:`~.cache.ContextCache.reserve`), so decoding writes it in place; a model that
    decodes compiled gets a static cache (the block's room as its scratch)."""
    tokens, valid = left_pad(prompts, config.pad_token_id, model.context_device)
    out = Collector(tokens.shape[0], config.max_new_tokens, config.eos_token_id, on_commit)
    stats = stats_type(tokens=out.rows, context_forwards=1, row_context_forwards=len(prompts))
    prefill = model.prefill(tokens, valid=valid, logits=logits)
    block = getattr(config, "block_size", 1)
    room = config.max_new_tokens + block
    prefill.cache = prefill.cache.reserve(room, static=static_caches(model), scratch=block)
    return out, stats, prefill
