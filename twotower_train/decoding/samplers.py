"""The three generation modes of the model card (docs/inference.md), on token ids only.

* :func:`generate_mask_diffusion` — block-wise confidence unmasking with the denoiser;
* :func:`generate_mock_ar` — one next token at a time, predicted by the denoiser from an
  all-[MASK] query block (a shifted denoiser, ``denoiser_shift``, leaves that token to the
  context tower: AR decoding);
* :func:`generate_ar` — the context tower alone, standard cached decoding.

(:mod:`.speculative` adds self-speculative decoding on the same pieces.) They drive any model
with the incremental interface of :mod:`.cache` (``prefill``, ``denoise_block``, ``advance``;
full-vocabulary logits): the Megatron :class:`~twotower_train.model.two_tower.TwoTowerModel` and
the Hugging Face export, which ships a verbatim copy of this module (it imports only ``torch``
and its siblings). Prompts of different lengths are left-padded into one batch. Each returns a
:class:`Generation` with the new tokens and what they cost (tokens per denoiser forward is the
card's figure). An ``on_commit`` callback sees every committed block as it lands (streaming; it
can also end a row, e.g. at a stop sequence).

Example (CPU, untrained tiny model — the tokens are noise, the mechanics are real)::

    import torch
    from twotower_train import distributed
    from twotower_train.model.config import preset
    from twotower_train.model.two_tower import TwoTowerModel
    from twotower_train.decoding.samplers import MaskDiffusionConfig, generate_mask_diffusion
    distributed.initialize(seed=0)
    model = TwoTowerModel.build(preset("tiny")).eval()
    config = MaskDiffusionConfig(max_new_tokens=16)
    out = generate_mask_diffusion(model, [[5, 6, 7], [8, 9]], config)
    print(out.tokens, out.tokens_per_forward)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable  # noqa: UP035  (the export's copies import only what tests/inference/test_samplers.py allows)

import torch

from .sampling import TokenChoice, choose_tokens

QUERY_BLOCK_SIZE = 1
"""Mock-AR's default query block (:attr:`MockARConfig.query_block_size`): a lone [MASK] — on the
demo model it predicts the next token as well as the first position of a 16- or 32-wide
all-[MASK] block, at 1/S of the denoiser work (docs/inference.md)."""

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

    def __post_init__(self) -> None:
        if self.max_new_tokens <= 0:
            raise ValueError(f"max_new_tokens={self.max_new_tokens} must be positive")


@dataclass
class ARConfig(DecodeConfig):
    """AR decoding with the context tower alone."""


@dataclass
class MockARConfig(DecodeConfig):
    mask_token_id: int = 3
    query_block_size: int = QUERY_BLOCK_SIZE
    """Width of the all-[MASK] block whose first position predicts the next token: 1 is a lone
    [MASK]; S is the block shape training shows (docs/inference.md has the measurement that
    chose the default)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.query_block_size <= 0:
            raise ValueError(f"query_block_size={self.query_block_size} must be positive")


@dataclass
class MaskDiffusionConfig(DecodeConfig):
    mask_token_id: int = 3
    block_size: int = 16
    """Tokens generated per block (S; the released model samples at 16)."""
    steps_per_block: int = 16
    """Denoising iterations per block at most; a floor guarantees the block completes."""
    confidence_threshold: float = 0.8
    """γ: every masked position whose chosen token has at least this probability is committed."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.block_size <= 0:
            raise ValueError(f"block_size={self.block_size} must be positive")
        if self.steps_per_block <= 0:
            raise ValueError(f"steps_per_block={self.steps_per_block} must be positive")
        if not 0 < self.confidence_threshold <= 1:
            raise ValueError(f"confidence_threshold={self.confidence_threshold} must be in (0, 1]")


@dataclass
class Generation:
    """New tokens per prompt and what they cost.

    Forwards are counted twice: batched calls (``*_forwards``, each runs every row) and row
    forwards (``row_*_forwards``: per forward, the rows still generating — a row stops counting
    once its output is complete, even though the batch keeps computing it). The per-token rates
    use row forwards, so a row that stops early is charged only for the forwards it needed.
    """

    tokens: list[list[int]]
    """New tokens per prompt (up to and including EOS)."""
    denoiser_forwards: int = 0
    context_forwards: int = 0
    """Batched context-tower forwards, the prefill included."""
    row_denoiser_forwards: int = 0
    row_context_forwards: int = 0

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
    ``on_commit`` says so."""

    def __init__(self, batch: int, max_new: int, eos: int | None, on_commit: OnCommit | None):
        self.rows: list[list[int]] = [[] for _ in range(batch)]
        self.done = [False] * batch
        self.max_new, self.eos, self.on_commit = max_new, eos, on_commit

    def extend(self, new: list[list[int]]) -> None:
        for row, ids in enumerate(new):
            if self.done[row]:
                continue
            start = len(self.rows[row])
            for token in ids:
                self.rows[row].append(token)
                if token == self.eos or len(self.rows[row]) >= self.max_new:
                    self.done[row] = True
                    break
            added = self.rows[row][start:]
            if added and self.on_commit is not None and self.on_commit(row, added, self.rows[row]):
                self.done[row] = True

    def remaining(self, device) -> torch.Tensor:
        """(b,) tokens each row may still add (0 once it is done)."""
        return torch.tensor(
            [0 if done else self.max_new - len(row) for row, done in zip(self.rows, self.done)],
            dtype=torch.long,
            device=device,
        )

    @property
    def active(self) -> int:
        return self.done.count(False)

    @property
    def finished(self) -> bool:
        return all(self.done)


def prefill_prompts(
    model,
    prompts: list[list[int]],
    config: DecodeConfig,
    logits: str,
    on_commit: OnCommit | None,
    stats_type: type[Generation] = Generation,
):
    """Left-pad the prompts and prefill the context tower → (collector, stats, prefill)."""
    tokens, valid = left_pad(prompts, config.pad_token_id, model.context_device)
    out = Collector(tokens.shape[0], config.max_new_tokens, config.eos_token_id, on_commit)
    stats = stats_type(tokens=out.rows, context_forwards=1, row_context_forwards=len(prompts))
    return out, stats, model.prefill(tokens, valid=valid, logits=logits)


def shifted(model) -> bool:
    """Whether ``model``'s denoiser output at block position j scores position j + 1
    (``denoiser_shift``; the block's first position is then the context tower's prediction)."""
    return bool(getattr(model, "denoiser_shift", False))


def block_logits(model, cache, block: torch.Tensor, t: torch.Tensor, first=None) -> torch.Tensor:
    """Logits (b, S, V) scoring every position of ``block`` (b, S) right after ``cache``: one
    denoiser forward.

    Without ``denoiser_shift`` these are the denoiser's outputs. With it, the output at block
    position j scores position j + 1 and position 0 is scored by ``first`` (b, 1, V), the
    context tower's logits at the last cached position (its next-token prediction); ``first``
    None is for callers whose position 0 is already decoded (its score is never read)."""
    logits = model.denoise_block(cache, block, t)  # (b, S, V)
    if not shifted(model):
        return logits
    if first is None:
        first = torch.zeros_like(logits[:, :1])
    return torch.cat([first.to(logits), logits[:, :-1]], dim=1)


def _settled(block: torch.Tensor, decoded: torch.Tensor, needed: torch.Tensor, eos: int | None):
    """(b,) rows whose output from this block is fixed: their first ``needed`` positions are
    decoded, or a decoded EOS ends an unbroken run of decoded positions (what follows it is
    discarded)."""
    lead = decoded.long().cumprod(-1).bool()  # (b, S): every position up to here is decoded
    settled = lead.sum(-1) >= needed
    if eos is not None:
        settled |= (lead & (block == eos)).any(-1)
    return settled


def unmask_block(
    model,
    cache,
    block: torch.Tensor,
    decoded: torch.Tensor,
    needed: torch.Tensor,
    config: MaskDiffusionConfig,
    stats: Generation,
    generator: torch.Generator | None,
    first: torch.Tensor | None = None,
) -> torch.Tensor:
    """Confidence unmasking of ``block`` (b, S) after ``cache`` (both on the denoiser's device);
    ``decoded`` (b, S) marks the positions already fixed. Steps until every row is settled
    (:func:`_settled`; ``needed`` (b,) = positions of this block the row's output can still
    use) or the steps run out; the floor guarantees that every position is decoded by then.
    Stopping once every row is settled skips only forwards whose commits would be discarded,
    so the tokens are those of running all the steps. ``first``: :func:`block_logits`."""
    S = block.shape[1]
    decoded = decoded.clone()
    for step in range(config.steps_per_block):
        settled = _settled(block, decoded, needed, config.eos_token_id)
        if settled.all():
            break
        masked = ~decoded
        t = masked.float().mean(-1)  # (b,) the block's masked fraction
        logits = block_logits(model, cache, block, t, first)  # (b, S, V)
        stats.denoiser_forwards += 1
        stats.row_denoiser_forwards += int((~settled).sum())
        proposal, confidence = choose_tokens(
            logits, config.choice, forbid=config.mask_token_id, generator=generator
        )
        confidence = confidence.masked_fill(~masked, -1.0)  # decoded positions stay fixed
        commit = masked & (confidence >= config.confidence_threshold)
        # Floor: enough of the most confident positions to finish within the steps left.
        floor = torch.ceil(masked.sum(-1) / (config.steps_per_block - step)).long()  # (b,)
        order = confidence.argsort(dim=-1, descending=True)
        rank = torch.empty_like(order).scatter_(
            -1, order, torch.arange(S, device=order.device).expand_as(order)
        )
        commit |= masked & (rank < floor.unsqueeze(-1))
        block = torch.where(commit, proposal, block)
        decoded |= commit
    return block


@torch.no_grad()
def generate_mask_diffusion(
    model,
    prompts: list[list[int]],
    config: MaskDiffusionConfig,
    generator: torch.Generator | None = None,
    on_commit: OnCommit | None = None,
) -> Generation:
    """Block-wise mask diffusion with confidence unmasking (module docstring; card §"How mask
    diffusion works")."""
    # A shifted denoiser scores each block's first position with the context tower's last logits.
    context_logits = "last" if shifted(model) else "none"
    out, stats, prefill = prefill_prompts(model, prompts, config, context_logits, on_commit)
    cache, first, batch, S = prefill.cache, prefill.logits, len(prompts), config.block_size
    device = model.denoiser_device
    while not out.finished:
        block = torch.full((batch, S), config.mask_token_id, dtype=torch.long, device=device)
        decoded = torch.zeros(batch, S, dtype=torch.bool, device=device)
        # Towers on two devices: the denoiser reads a copy of the cache on its own device.
        block = unmask_block(
            model,
            cache.to(device),
            block,
            decoded,
            out.remaining(device).clamp(max=S),
            config,
            stats,
            generator,
            None if first is None else first.to(device),
        )
        out.extend(block.tolist())
        if out.finished:
            break
        stats.row_context_forwards += out.active
        step = model.advance(cache, block.to(model.context_device), logits=context_logits)
        cache, first = step.cache, step.logits
        stats.context_forwards += 1
    return stats


@torch.no_grad()
def generate_mock_ar(
    model,
    prompts: list[list[int]],
    config: MockARConfig,
    generator: torch.Generator | None = None,
    on_commit: OnCommit | None = None,
) -> Generation:
    """Two-tower AR: the context tower builds the cache, the denoiser predicts the next token as
    the first position of an all-[MASK] block of ``query_block_size`` positions (t = 1).

    With ``denoiser_shift`` the next token after the cache is scored by the context tower
    itself (:func:`block_logits`), so this is AR decoding and runs no denoiser forward."""
    if shifted(model):
        return generate_ar(model, prompts, config, generator, on_commit)
    out, stats, prefill = prefill_prompts(model, prompts, config, "none", on_commit)
    cache, batch, device = prefill.cache, len(prompts), model.denoiser_device
    shape = (batch, config.query_block_size)
    masked = torch.full(shape, config.mask_token_id, dtype=torch.long, device=device)
    t = torch.ones(batch, device=device)
    while not out.finished:
        logits = model.denoise_block(cache.to(device), masked, t)[:, :1]  # (b, 1, V)
        stats.denoiser_forwards += 1
        stats.row_denoiser_forwards += out.active
        new, _ = choose_tokens(
            logits, config.choice, forbid=config.mask_token_id, generator=generator
        )
        out.extend(new.tolist())
        if out.finished:
            break
        stats.row_context_forwards += out.active
        cache = model.advance(cache, new.to(model.context_device), logits="none").cache
        stats.context_forwards += 1
    return stats


@torch.no_grad()
def generate_ar(
    model,
    prompts: list[list[int]],
    config: ARConfig,
    generator: torch.Generator | None = None,
    on_commit: OnCommit | None = None,
) -> Generation:
    """Standard cached AR decoding with the context tower only."""
    out, stats, step = prefill_prompts(model, prompts, config, "last", on_commit)
    while True:
        new, _ = choose_tokens(step.logits, config.choice, generator=generator)
        out.extend(new.tolist())
        if out.finished:
            break
        stats.row_context_forwards += out.active
        step = model.advance(step.cache, new, logits="last")
        stats.context_forwards += 1
    return stats
