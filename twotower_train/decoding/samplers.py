"""The three generation modes of the model card (docs/inference.md), on token ids only.

* :func:`generate_mask_diffusion` — block-wise confidence unmasking with the denoiser;
* :func:`generate_mock_ar` — one next token at a time: the unmodulated denoiser on the last
  committed token, with the context cache one position short (the released semantics);
* :func:`generate_ar` — the context tower alone, standard cached decoding.

The semantics are the released remote code's (DESIGN.md §5; docs/inference.md): for a batch of
one, greedy outputs are token-identical to it on the same weights. Two differences on purpose:
a batch's rows each get their own diffusion time t (the released code uses the batch mean —
identical at batch 1), and a row ends at its first EOS or at ``max_new_tokens`` (any count, not
only whole blocks) — its tokens after EOS are dropped, where the released code returns the rest
of the block and of the batch's blocks.

(:mod:`.speculative` adds self-speculative decoding on the same pieces.) They drive any model
with the incremental interface of :mod:`.cache` (``prefill``, ``denoise_block``, ``advance``;
full-vocabulary logits): the Megatron :class:`~twotower_train.model.two_tower.TwoTowerModel` and
the Hugging Face export, which ships a verbatim copy of this module (it imports only ``torch``
and its siblings). Prompts of different lengths are left-padded into one batch. Each returns a
:class:`Generation` with the new tokens and what they cost (tokens per denoiser forward is the
card's figure). An ``on_commit`` callback sees every committed block as it lands (streaming; it
can also end a row, e.g. at a stop sequence); mask diffusion's ``step_callback`` sees every
denoising step (:data:`StepCallback`, the released hook).

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

from dataclasses import dataclass
from typing import Callable  # noqa: UP035  (the export's copies import only what tests/inference/test_samplers.py allows)

import torch

from .batching import (
    Collector,
    DecodeConfig,
    Generation,
    OnCommit,
    left_pad,
    prefill_prompts,
    static_caches,
)
from .cache import ContextCache
from .compiled import decoding_model
from .sampling import choose_block_tokens, choose_tokens

StepCallback = Callable[..., None]
"""``step_callback(step, steps_per_block, xt, t=, logits=, block_idx=)``, the released hook: once
when a block starts (step 0, ``xt`` all [MASK], ``t=1.0``, ``logits=None``), then after each
denoising step with the block ``xt`` (b, S) the denoiser read, ``t`` (the batch's mean masked
fraction, a float; each row's own at batch 1) and the logits (b, S, V) it returned."""


@dataclass
class ARConfig(DecodeConfig):
    """AR decoding with the context tower alone."""


@dataclass
class MockARConfig(DecodeConfig):
    """Mock-AR: the unmodulated denoiser predicts each next token (no [MASK] involved)."""


@dataclass
class MaskDiffusionConfig(DecodeConfig):
    mask_token_id: int = 3
    block_size: int = 16
    """Tokens generated per block (S; the released model samples at 16)."""
    steps_per_block: int = 16
    """Denoising iterations per block at most; a floor guarantees the block completes."""
    confidence_threshold: float = 0.8
    """γ: every masked position whose chosen token's untempered probability exceeds this is
    committed (the card's operating point; the export's ``generate_mask_diffusion`` keeps the
    released code's default, 0.9)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.block_size <= 0:
            raise ValueError(f"block_size={self.block_size} must be positive")
        if self.steps_per_block <= 0:
            raise ValueError(f"steps_per_block={self.steps_per_block} must be positive")
        if not 0 < self.confidence_threshold <= 1:
            raise ValueError(f"confidence_threshold={self.confidence_threshold} must be in (0, 1]")


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
    return _scores(model, model.denoise_block(cache, block, t), first)


def _scores(model, logits: torch.Tensor, first: torch.Tensor | None) -> torch.Tensor:
    """The denoiser's raw ``logits`` (b, S, V) as per-position scores (:func:`block_logits`)."""
    if not shifted(model):
        return logits
    if first is None:
        first = torch.zeros_like(logits[:, :1])
    return torch.cat([first.to(logits), logits[:, :-1]], dim=1)


class _BlockChoice:
    """Per-step token choice over a block's positions from the denoiser's raw logits.

    Greedy choices of a shifted denoiser skip building the (b, S, V) score tensor of
    :func:`block_logits` (a copy of the whole block's logits per step): the denoiser's outputs
    0..S−2 score positions 1..S−1 and position 0's choice, from the context tower's ``first``
    logits, is the same at every step, so it is made once per block. Sampling draws from the
    full score tensor, so the random stream is the one :func:`block_logits` defines."""

    def __init__(self, model, config: MaskDiffusionConfig, first, generator):
        self.config, self.generator = config, generator
        self.fast = shifted(model) and config.choice.temperature == 0
        self.first = first
        if self.fast:
            if first is None:  # position 0 already decoded: its score is never read
                self.head = None
            else:
                self.head = choose_block_tokens(first, config.choice, config.mask_token_id)

    def __call__(self, model, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        config = self.config
        if not self.fast:
            scores = _scores(model, logits, self.first)
            return choose_block_tokens(scores, config.choice, config.mask_token_id, self.generator)
        proposal, confidence = choose_block_tokens(
            logits[:, :-1], config.choice, config.mask_token_id
        )
        if self.head is None:
            head = (
                proposal.new_zeros(proposal.shape[0], 1),
                confidence.new_zeros(confidence.shape[0], 1),
            )
        else:
            head = self.head
        return torch.cat([head[0], proposal], 1), torch.cat([head[1], confidence], 1)


def _settled(block: torch.Tensor, decoded: torch.Tensor, needed: torch.Tensor, eos: int | None):
    """(b,) rows whose output from this block is fixed: their first ``needed`` positions are
    decoded, or a decoded EOS ends an unbroken run of decoded positions (what follows it is
    discarded)."""
    lead = decoded.long().cumprod(-1).bool()  # (b, S): every position up to here is decoded
    settled = lead.sum(-1) >= needed
    if eos is not None:
        settled |= (lead & (block == eos)).any(-1)
    return settled


def commit_count(
    confidence: torch.Tensor, masked: torch.Tensor, threshold: float, steps_left
) -> torch.Tensor:
    """(b,) positions to commit this step: min(m, max(#above γ or 1 if none, ⌈m / steps
    left⌉)) of the m masked ones; ``confidence`` (b, S) is −1 at decoded positions;
    ``steps_left`` an int or a 0-dim tensor."""
    remaining = masked.sum(-1)  # (b,)
    above = (confidence > threshold).sum(-1).clamp(min=1)
    floor = (remaining + steps_left - 1).div(steps_left, rounding_mode="floor")  # ⌈m / left⌉
    return torch.minimum(torch.maximum(above, floor), remaining)


def descending_rank(values: torch.Tensor) -> torch.Tensor:
    """(b, S) each position's place when ``values`` (b, S) are sorted descending, ties in
    position order (a stable sort's). By pairwise comparison: S is a block (16), where this is
    a few element-wise ops and two sorts cost more."""
    before = values.unsqueeze(-1) < values.unsqueeze(-2)  # [j, i]: i sorts before j
    ties = values.unsqueeze(-1) == values.unsqueeze(-2)
    earlier = torch.ones_like(ties).tril(-1)  # [j, i]: i < j
    return (before | (ties & earlier)).sum(-1)


@dataclass
class _BlockState:
    """A block between denoising steps, all on the device: its tokens, which are decoded,
    whether every row is settled (``done``, 0-dim), how many rows are not (``live``) and the
    diffusion time of the next step (``t`` (b,), each row's masked fraction)."""

    block: torch.Tensor
    decoded: torch.Tensor
    done: torch.Tensor
    live: torch.Tensor
    t: torch.Tensor


def _progress(block, decoded, needed, eos: int | None) -> _BlockState:
    settled = _settled(block, decoded, needed, eos)
    t = (~decoded).float().mean(-1)
    return _BlockState(block, decoded, settled.all(), (~settled).sum(), t)


def _denoising_step(
    choose, model, logits, state: _BlockState, needed, steps_left, threshold: float, eos
) -> _BlockState:
    """One step's commit rule (:func:`unmask_block`) from the denoiser's ``logits``: the block
    after it. Device work only — a compiled model runs it as one graph."""
    block, decoded = state.block, state.decoded
    masked = ~decoded
    proposal, confidence = choose(model, logits)
    confidence = confidence.masked_fill(decoded, -1.0)  # decoded rank last
    count = commit_count(confidence, masked, threshold, steps_left)
    commit = masked & (descending_rank(confidence) < count.unsqueeze(-1))
    return _progress(torch.where(commit, proposal, block), decoded | commit, needed, eos)


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
    step_callback: StepCallback | None = None,
    block_idx: int = 0,
) -> torch.Tensor:
    """Confidence unmasking of ``block`` (b, S) after ``cache`` (both on the denoiser's device);
    ``decoded`` (b, S) marks the positions already fixed. Per step, of the m masked positions
    of a row, the k most confident are committed (confidence: the untempered probability of the
    chosen token, :func:`~.sampling.choose_block_tokens`), k = :func:`commit_count` —
    everything on the last step — and the rest stay masked. Steps until every row is settled
    (:func:`_settled`; ``needed`` (b,) = positions of this block the row's output can still
    use) or the steps run out. Stopping once every row is settled skips only forwards whose
    commits would be discarded, so the tokens are those of running all the steps. ``first``:
    :func:`block_logits`; ``step_callback``: :data:`StepCallback`.

    The commit rule runs on the device (compiled into one graph when the model decodes
    compiled and greedily); the loop reads one flag per step from it (whether every row is
    settled) and the row forwards are summed there and read once per block."""
    choose = _BlockChoice(model, config, first, generator)
    steps = config.steps_per_block
    step_rule = _denoising_step
    if config.choice.temperature == 0:  # a random draw's generator stays out of compiled code
        step_rule = getattr(model, "compile_function", lambda f: f)(_denoising_step)
    steps_left = torch.arange(steps, 0, -1, device=block.device)  # one 0-dim view per step
    state = _progress(block, decoded.clone(), needed, config.eos_token_id)
    row_forwards = torch.zeros((), dtype=torch.long, device=block.device)
    for step in range(steps):
        if bool(state.done):
            break
        logits = model.denoise_block(cache, state.block, state.t)  # (b, S, V) raw outputs
        stats.denoiser_forwards += 1
        row_forwards += state.live
        if step_callback is not None:  # the block as the denoiser read it
            step_callback(
                step,
                steps,
                state.block,
                t=float(state.t.mean()),
                logits=_scores(model, logits, first),
                block_idx=block_idx,
            )
        state = step_rule(
            choose,
            model,
            logits,
            state,
            needed,
            steps_left[step],
            config.confidence_threshold,
            config.eos_token_id,
        )
    stats.row_denoiser_forwards += int(row_forwards)
    return state.block


@torch.no_grad()
def generate_mask_diffusion(
    model,
    prompts: list[list[int]],
    config: MaskDiffusionConfig,
    generator: torch.Generator | None = None,
    on_commit: OnCommit | None = None,
    step_callback: StepCallback | None = None,
) -> Generation:
    """Block-wise mask diffusion with confidence unmasking (module docstring; card §"How mask
    diffusion works"; :func:`unmask_block`)."""
    model = decoding_model(model, config)
    # A shifted denoiser scores each block's first position with the context tower's last logits.
    context_logits = "last" if shifted(model) else "none"
    out, stats, prefill = prefill_prompts(model, prompts, config, context_logits, on_commit)
    cache, first, S = prefill.cache, prefill.logits, config.block_size
    device = model.denoiser_device
    block_idx = 0
    while not out.finished:
        batch = len(out.live)
        block = torch.full((batch, S), config.mask_token_id, dtype=torch.long, device=device)
        decoded = torch.zeros(batch, S, dtype=torch.bool, device=device)
        if step_callback is not None:
            step_callback(0, config.steps_per_block, block, t=1.0, logits=None, block_idx=block_idx)
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
            step_callback,
            block_idx,
        )
        block_idx += 1
        gained = out.extend(block.tolist())
        if shifted(model):  # position 0 was the context tower's choice, in every row it reached
            stats.context_tokens += sum(n > 0 for n in gained)
        if out.finished:
            break
        block = block.to(model.context_device)
        stay = out.leave(model.context_device)
        if stay is not None:
            cache, block = cache.select(stay), block[stay]
        stats.row_context_forwards += out.active
        step = model.advance(cache, block, logits=context_logits)
        cache, first = step.cache, step.logits
        stats.context_forwards += 1
    return stats


def one_short(before: ContextCache, after: ContextCache) -> ContextCache:
    """The cache one position short of ``after`` (= ``before`` advanced by one token): its K/V
    minus the last position (views) and ``before``'s Mamba states — mock-AR's denoiser cache."""
    if after.static:  # the same buffers, ending one position earlier
        return after._like(
            lambda t: t, mamba=before.mamba, end=after.end - 1, _length=after.length - 1
        )
    return ContextCache(
        keys={i: k[:, :, :-1] for i, k in after.keys.items()},
        values={i: v[:, :, :-1] for i, v in after.values.items()},
        mamba=before.mamba,
        valid=after.valid[:, :-1],
    )


@torch.no_grad()
def generate_mock_ar(
    model,
    prompts: list[list[int]],
    config: MockARConfig,
    generator: torch.Generator | None = None,
    on_commit: OnCommit | None = None,
) -> Generation:
    """Two-tower AR as released: token p is predicted by the denoiser, unmodulated (``t=None``),
    run on the last committed token p − 1 with the context cache of the positions before it
    (attention K/V of positions < p − 1, Mamba conv/SSM states before p − 1). The context tower
    advances one token at a time; its prefill runs in two passes (all prompt tokens but the
    last, then the last) to keep the states before the last token."""
    model = decoding_model(model, config)
    tokens, valid = left_pad(prompts, config.pad_token_id, model.context_device)
    out = Collector(tokens.shape[0], config.max_new_tokens, config.eos_token_id, on_commit)
    stats = Generation(tokens=out.rows, context_forwards=2, row_context_forwards=2 * len(prompts))
    if tokens.shape[1] == 1:  # one-token prompts: an empty prefix, as one padding column
        tokens = torch.cat([torch.full_like(tokens, config.pad_token_id), tokens], dim=1)
        valid = torch.cat([torch.zeros_like(valid), valid], dim=1)
    short = model.prefill(tokens[:, :-1], valid=valid[:, :-1], logits="none").cache
    last = tokens[:, -1:]  # (b, 1) the last committed token
    if static_caches(model):  # `short` and the full cache share buffers, the block has scratch
        short = short.reserve(config.max_new_tokens + 1, static=True, scratch=1)
        cache = model.advance(short, last, logits="none").cache
    else:
        # Room in the full cache only: `short` caches never own buffers, so the denoiser's
        # block K/V (ContextCache.block_kv) never land on the full cache's last position.
        cache = model.advance(short, last, logits="none").cache.reserve(config.max_new_tokens)
    device = model.denoiser_device
    while not out.finished:
        logits = model.denoise_block(short.to(device), last.to(device), None)  # (b, 1, V)
        stats.denoiser_forwards += 1
        stats.row_denoiser_forwards += out.active
        new, _ = choose_tokens(logits, config.choice, generator=generator)
        out.extend(new.tolist())
        if out.finished:
            break
        last = new.to(model.context_device)
        stay = out.leave(model.context_device)
        if stay is not None:
            cache, last = cache.select(stay), last[stay]
        stats.row_context_forwards += out.active
        advanced = model.advance(cache, last, logits="none").cache
        short, cache = one_short(cache, advanced), advanced
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
    model = decoding_model(model, config)
    out, stats, step = prefill_prompts(model, prompts, config, "last", on_commit)
    while True:
        new, _ = choose_tokens(step.logits, config.choice, generator=generator)
        out.extend(new.tolist())
        if out.finished:
            break
        cache, stay = step.cache, out.leave(new.device)
        if stay is not None:
            cache, new = cache.select(stay), new[stay]
        stats.row_context_forwards += out.active
        step = model.advance(cache, new, logits="last")
        stats.context_forwards += 1
    return stats
