"""Mask diffusion's inner loop: confidence unmasking of one block with the denoiser.

:func:`unmask_block` runs the denoising steps of a block (the commit rule of the released code,
on the device, one fused step per forward); :func:`block_logits` turns the denoiser's raw
outputs into per-position scores for a shifted or unshifted denoiser. Mask diffusion
(:func:`~.samplers.generate_mask_diffusion`) and speculative decoding's drafts
(:mod:`.speculative`) both run it.

Torch-only, like its siblings (the Hugging Face export ships it verbatim).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable  # noqa: UP035  (the export's copies import only what tests/inference/test_samplers.py allows)

import torch

from .batching import DecodeConfig, Generation
from .sampling import choose_block_tokens

StepCallback = Callable[..., None]
"""``step_callback(step, steps_per_block, xt, t=, logits=, block_idx=)``, the released hook: once
when a block starts (step 0, ``xt`` all [MASK], ``t=1.0``, ``logits=None``), then after each
denoising step with the block ``xt`` (b, S) the denoiser read, ``t`` (the batch's mean masked
fraction, a float; each row's own at batch 1) and the logits (b, S, V) it returned."""


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
    choose, model, cache, state: _BlockState, needed, steps_left, threshold: float, eos
) -> tuple[torch.Tensor, _BlockState]:
    """One denoising step of :func:`unmask_block`: the denoiser over the block, then the commit
    rule → (the denoiser's raw logits, the block after the step). Device work only — decoding
    compiled, it is one graph."""
    logits = model.denoise_block(cache, state.block, state.t)  # (b, S, V)
    block, decoded = state.block, state.decoded
    masked = ~decoded
    proposal, confidence = choose(model, logits)
    confidence = confidence.masked_fill(decoded, -1.0)  # decoded rank last
    count = commit_count(confidence, masked, threshold, steps_left)
    commit = masked & (descending_rank(confidence) < count.unsqueeze(-1))
    return logits, _progress(torch.where(commit, proposal, block), decoded | commit, needed, eos)


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

    The commit rule runs on the device — decoding compiled and greedily, each step (forward and
    rule) is one graph; the loop reads one flag per step from it (whether every row is
    settled) and the row forwards are summed there and read once per block."""
    choose = _BlockChoice(model, config, first, generator)
    steps = config.steps_per_block
    step_of, target = _denoising_step, model
    compile_function = getattr(model, "compile_function", None)
    # A random draw's generator stays out of compiled code; a cache that is not static
    # (compiled.py) runs eager.
    if compile_function and config.choice.temperature == 0 and cache.static:
        step_of, target = compile_function(_denoising_step), model.wrapped
    steps_left = torch.arange(steps, 0, -1, device=block.device)  # one 0-dim view per step
    state = _progress(block, decoded.clone(), needed, config.eos_token_id)
    row_forwards = torch.zeros((), dtype=torch.long, device=block.device)
    for step in range(steps):
        if bool(state.done):
            break
        read = state
        logits, state = step_of(
            choose,
            target,
            cache,
            read,
            needed,
            steps_left[step],
            config.confidence_threshold,
            config.eos_token_id,
        )
        stats.denoiser_forwards += 1
        row_forwards += read.live
        if step_callback is not None:  # the block as the denoiser read it
            step_callback(
                step,
                steps,
                read.block,
                t=float(read.t.mean()),
                logits=_scores(model, logits, first),
                block_idx=block_idx,
            )
    stats.row_denoiser_forwards += int(row_forwards)
    return state.block
