"""The decoding state the samplers carry, and the interface a two-tower model offers them.

Torch-only on purpose: this module, :mod:`.sampling` and :mod:`.samplers` import nothing but
``torch`` and each other (relative imports), so the Hugging Face export copies them verbatim
next to its modeling code and both implementations decode with the same algorithm.

A model the samplers can drive (:class:`DecodingModel`) has three methods, all under
``torch.no_grad()`` and all returning **full-vocabulary** logits (a tensor-parallel model gathers
them itself):

* ``prefill(tokens, valid=None, logits="last")`` — the context tower over left-padded prompts
  ``tokens`` (b, P) (``valid`` (b, P) False at padding) → :class:`ContextOutput`;
* ``advance(cache, tokens, logits="last", position_states=False)`` — the context tower over
  ``tokens`` (b, s) appended to ``cache`` → :class:`ContextOutput` whose cache covers P + s
  positions. With ``position_states`` it also returns, per Mamba layer, the states after every
  one of the s positions (:attr:`ContextOutput.position_states`), so a caller can roll the cache
  back to any accepted length exactly (:meth:`ContextOutput.rollback`; speculative decoding);
* ``denoise_block(cache, block, t)`` — denoiser logits (b, S, V) for the block of S tokens right
  after the cache, at diffusion time ``t`` (b,): the raw output at every block position.
  Which token each output scores is the attribute ``denoiser_shift``: False, the token at that
  position; True, the token after it (``samplers.block_logits`` turns either into per-position
  scores).

``logits`` is ``"all"`` (b, s, V), ``"last"`` (b, 1, V) or ``"none"``. Two attributes say
where the towers live, ``context_device`` and ``denoiser_device`` (the same device unless the
towers were placed apart); the samplers move the cache to the denoiser's device before each
denoiser call and committed tokens back to the context tower's (:meth:`ContextCache.to`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch


@dataclass
class MambaStates:
    """Conv state (B, w−1, conv_dim) and SSM state (B, heads, head_dim, d_state), fp32.

    With an extra axis after B (e.g. (b, n, …)) it holds one state per block boundary or per
    position."""

    conv: torch.Tensor
    ssm: torch.Tensor

    def to(self, device: torch.device) -> MambaStates:
        return MambaStates(conv=self.conv.to(device), ssm=self.ssm.to(device))


@dataclass
class ContextCache:
    """Per-layer context state after ``length`` positions of a (left-padded) batch.

    keys/values: layer → (b, kv_heads, P, head_dim); mamba: layer → states after position P;
    valid: (b, P) bool, False at left padding (and at the rejected drafts a speculative
    rollback leaves behind, :meth:`ContextOutput.rollback`).

    Decoding preallocates (:meth:`reserve`): keys/values/valid are then views of the first P
    columns of buffers with room for more, :meth:`extend` / :meth:`write_kv` write the next
    positions into that room in place (no concatenation of the whole cache per advance) and
    :meth:`block_kv` puts a denoised block's K/V right after the cache without copying it.
    Writes land beyond every existing view's P, so earlier cache objects stay what they were.
    A cache without buffers (training, scoring, one built by hand) concatenates instead.
    """

    keys: dict[int, torch.Tensor] = field(default_factory=dict)
    values: dict[int, torch.Tensor] = field(default_factory=dict)
    mamba: dict[int, MambaStates] = field(default_factory=dict)
    valid: torch.Tensor | None = None
    buffers: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict, repr=False)
    """layer → (key buffer, value buffer), (b, kv_heads, capacity, head_dim)."""
    valid_buffer: torch.Tensor | None = field(default=None, repr=False)
    """(b, capacity) bool; ``valid`` is its first P columns."""
    _past: ContextCache | None = field(default=None, repr=False)  # set by extend()
    _masks: dict = field(default_factory=dict, repr=False)  # block_mask(), per block

    @property
    def length(self) -> int:
        return 0 if self.valid is None else self.valid.shape[1]

    @property
    def capacity(self) -> int:
        """Positions the buffers hold (the length when there are none)."""
        return self.length if self.valid_buffer is None else self.valid_buffer.shape[1]

    def to(self, device: torch.device) -> ContextCache:
        """This cache on ``device`` — itself when it is already there (one-device decoding)."""
        if self.valid is None or self.valid.device == torch.device(device):
            return self
        return ContextCache(
            keys={i: k.to(device) for i, k in self.keys.items()},
            values={i: v.to(device) for i, v in self.values.items()},
            mamba={i: m.to(device) for i, m in self.mamba.items()},
            valid=self.valid.to(device),
        )

    def select(self, rows: torch.Tensor) -> ContextCache:
        """The cache of batch rows ``rows`` (a long index), in that order — finished rows
        leave the batch (one gather of what the kept rows hold, buffers included)."""
        out = ContextCache(
            mamba={
                i: MambaStates(conv=m.conv[rows], ssm=m.ssm[rows]) for i, m in self.mamba.items()
            },
            valid=None if self.valid is None else self.valid[rows],
        )
        if self.valid_buffer is not None:
            out.valid_buffer = self.valid_buffer[rows]
            out.valid = out.valid_buffer[:, : self.length]
        for i, k in self.keys.items():
            if i in self.buffers:
                out._hold(i, tuple(t[rows] for t in self.buffers[i]), self.length)
            else:
                out.keys[i], out.values[i] = k[rows], self.values[i][rows]
        return out

    def reserve(self, room: int) -> ContextCache:
        """This cache in buffers with ``room`` free positions after it (one copy, at prefill)."""
        if self.valid is None or self.capacity - self.length >= room:
            return self
        capacity = self.length + room
        valid_buffer = self.valid.new_zeros(self.valid.shape[0], capacity)
        valid_buffer[:, : self.length] = self.valid
        out = ContextCache(mamba=dict(self.mamba), valid_buffer=valid_buffer)
        out.valid = valid_buffer[:, : self.length]
        for i, k in self.keys.items():
            buffers = tuple(
                t.new_zeros(*t.shape[:2], capacity, t.shape[3]) for t in (k, self.values[i])
            )
            for buffer, t in zip(buffers, (k, self.values[i])):
                buffer[:, :, : self.length] = t
            out._hold(i, buffers, self.length)
        return out

    def _hold(self, layer: int, buffers: tuple[torch.Tensor, torch.Tensor], length: int) -> None:
        """Keep ``layer``'s (key, value) buffers, its keys/values the first ``length``."""
        self.buffers[layer] = buffers
        self.keys[layer], self.values[layer] = (t[:, :, :length] for t in buffers)

    def _write(self, layer: int, start: int, k: torch.Tensor, v: torch.Tensor):
        """Put k/v (b, kv_heads, s, hd) at positions [start, start + s) of ``layer``'s buffers
        → the buffers' views up to there."""
        end = start + k.shape[2]
        key_buffer, value_buffer = self.buffers[layer]
        key_buffer[:, :, start:end] = k
        value_buffer[:, :, start:end] = v
        return key_buffer[:, :, :end], value_buffer[:, :, :end]

    def extend(self, valid: torch.Tensor) -> ContextCache:
        """The cache object for this one + s new positions (``valid`` (b, s)); the context
        forward then stores each attention layer's new K/V with :meth:`write_kv` and sets the
        Mamba states. Writes into this cache's buffers when they have room."""
        if self.valid is None:  # from empty
            return ContextCache(valid=valid, _past=self)
        if self.valid_buffer is None:
            return ContextCache(valid=torch.cat([self.valid, valid], dim=1), _past=self)
        end = self.length + valid.shape[1]
        if end > self.capacity:  # out of room: grow once, doubling
            return self.reserve(max(2 * self.capacity, end) - self.length).extend(valid)
        self.valid_buffer[:, self.length : end] = valid
        return ContextCache(
            valid=self.valid_buffer[:, :end],
            valid_buffer=self.valid_buffer,
            buffers=self.buffers,
            _past=self,
        )

    def write_kv(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new positions' k/v (b, kv_heads, s, hd) of ``layer`` (a cache from
        :meth:`extend`) → that layer's keys and values over all positions."""
        past = self._past
        if layer in self.buffers:
            k, v = self._write(layer, self.length - k.shape[2], k, v)
        elif past is not None and layer in past.keys:
            k = torch.cat([past.keys[layer], k], dim=2)
            v = torch.cat([past.values[layer], v], dim=2)
        self.keys[layer], self.values[layer] = k, v
        return k, v

    def block_kv(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values (b, kv_heads, P + S, hd) for a block of S positions right after
        the cache attending to it and to itself: the block's k/v go into the buffers' free
        room (scratch: the next :meth:`extend` overwrites it) or are concatenated."""
        if layer not in self.keys:
            return k, v
        if layer in self.buffers and self.length + k.shape[2] <= self.capacity:
            return self._write(layer, self.length, k, v)
        return torch.cat([self.keys[layer], k], dim=2), torch.cat([self.values[layer], v], dim=2)

    def block_mask(self, size: int, causal_in_block: bool, device) -> torch.Tensor:
        """(b or 1, 1, S, P + S) bool for :meth:`block_kv`'s keys: every valid cache position,
        and the block bidirectionally (causally with ``causal_in_block``). Built once per
        cache and block shape — every layer and denoising step of the block reuses it."""
        # Under torch.compile the mask is part of the graph: kept on the cache it would be a
        # tensor of symbolic size stored on an input, which this torch's guards choke on.
        if torch.compiler.is_compiling():
            return self._build_block_mask(size, causal_in_block, device)
        key = (size, causal_in_block, str(device))
        if key not in self._masks:
            self._masks[key] = self._build_block_mask(size, causal_in_block, device)
        return self._masks[key]

    def _build_block_mask(self, size: int, causal_in_block: bool, device) -> torch.Tensor:
        in_block = torch.ones(size, size, dtype=torch.bool, device=device)
        if causal_in_block:
            in_block = in_block.tril()
        if self.keys:  # a cache with attention layers (an empty one: the block alone)
            b = self.valid.shape[0]
            context = self.valid.to(device).unsqueeze(1).expand(b, size, self.length)
            in_block = torch.cat([context, in_block.expand(b, size, size)], dim=-1)
        return in_block.unsqueeze(-3)


@dataclass
class ContextOutput:
    cache: ContextCache  # covers every position seen so far (prefix + these tokens)
    logits: torch.Tensor | None  # per the `logits` argument (vocab-parallel inside the towers)
    boundaries: dict[int, MambaStates] = field(default_factory=dict)
    """Training: states at every block boundary, (b, s/S + 1, …) per Mamba layer."""
    position_states: dict[int, MambaStates] = field(default_factory=dict)
    """``advance(..., position_states=True)``: states after each new position, (b, s, …)."""

    def rollback(self, previous: ContextCache, keep: torch.Tensor) -> ContextCache:
        """This advance's cache with row r keeping only the first ``keep[r]`` (b,) of its s new
        positions — what it would be had ``advance`` seen just those (needs ``position_states``).

        The cache ends after P + max(keep) positions; a row that keeps fewer has its rejected
        positions marked invalid (holes, never attended to). That is exact because the model
        has no positional embeddings: attention sees the same keys in the same order. Each
        Mamba layer takes its states after the row's last kept position (the pre-advance state
        when it keeps none). No K/V moves: the cache is a view of what the advance wrote.
        """
        cache = self.cache
        batch, total = cache.valid.shape
        new = total - previous.length
        keep = keep.to(device=cache.valid.device, dtype=torch.long)
        if keep.shape != (batch,) or bool((keep < 0).any()) or bool((keep > new).any()):
            raise ValueError(f"keep must be (b,) = ({batch},) values in [0, {new}]")
        kept = int(keep.max())
        length = previous.length + kept
        holes = torch.arange(kept, device=keep.device) < keep[:, None]  # (b, kept): kept
        rows = torch.arange(batch, device=keep.device)
        last = (keep - 1).clamp(min=0)  # (b,) index of each row's last kept position

        def state(before: torch.Tensor | None, after: torch.Tensor) -> torch.Tensor:
            chosen = after[rows, last]  # (b, …) the state after that position
            if before is None:  # advanced from an empty cache: zeros came before
                before = torch.zeros_like(chosen)
            none_kept = (keep == 0).view(-1, *([1] * (chosen.dim() - 1)))
            return torch.where(none_kept, before.to(chosen.dtype), chosen)

        mamba = {}
        for i, after in self.position_states.items():
            before = previous.mamba.get(i)
            mamba[i] = MambaStates(
                conv=state(None if before is None else before.conv, after.conv),
                ssm=state(None if before is None else before.ssm, after.ssm),
            )
        if set(mamba) != set(cache.mamba):
            raise ValueError("rollback needs advance(..., position_states=True)")
        if cache.valid_buffer is not None:  # mark the holes where the next extend won't write
            cache.valid_buffer[:, previous.length : length] &= holes
            valid = cache.valid_buffer[:, :length]
        elif previous.valid is None:
            valid = holes
        else:
            valid = torch.cat([previous.valid, holes], dim=1)
        return ContextCache(
            keys={i: k[:, :, :length] for i, k in cache.keys.items()},
            values={i: v[:, :, :length] for i, v in cache.values.items()},
            mamba=mamba,
            valid=valid,
            buffers=cache.buffers,
            valid_buffer=cache.valid_buffer,
        )


class DecodingModel(Protocol):
    """What the samplers call (module docstring)."""

    context_device: torch.device
    denoiser_device: torch.device
    denoiser_shift: bool

    def prefill(
        self, tokens: torch.Tensor, valid: torch.Tensor | None = None, logits: str = "last"
    ) -> ContextOutput: ...

    def advance(
        self,
        cache: ContextCache,
        tokens: torch.Tensor,
        logits: str = "last",
        position_states: bool = False,
    ) -> ContextOutput: ...

    def denoise_block(
        self, cache: ContextCache, block: torch.Tensor, t: torch.Tensor
    ) -> torch.Tensor: ...
