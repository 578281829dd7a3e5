"""The decoding state the samplers carry: per-layer context caches (:class:`ContextCache`) and
Mamba states (:class:`MambaStates`); :mod:`.interface` says what a model does with them.

Torch-only on purpose: the decoding modules import nothing but ``torch`` and each other
(relative imports), so the Hugging Face export copies them verbatim next to its modeling code
and both implementations decode with the same algorithm.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

STATIC_CAPACITY_STEP = 128
"""A static cache's capacity is a multiple of this: one compiled graph per 128 positions of
prompt + new tokens, not one per prompt length."""


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

    A **static** cache (``reserve(..., static=True)``, compiled decoding) keeps every shape fixed
    so that one compiled graph serves every step: keys/values/valid are the whole buffers, the
    filled length is a device tensor ``end`` (masks, not slices, hide what lies beyond it) and a
    denoised block's K/V go to ``scratch`` positions at the buffers' tail (no positional
    embeddings: where a key sits never matters, only the mask). ``length`` is then the host's
    copy of ``end``, kept by whoever advances the cache outside a compiled region.
    """

    keys: dict[int, torch.Tensor] = field(default_factory=dict)
    values: dict[int, torch.Tensor] = field(default_factory=dict)
    mamba: dict[int, MambaStates] = field(default_factory=dict)
    valid: torch.Tensor | None = None
    buffers: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict, repr=False)
    """layer → (key buffer, value buffer), (b, kv_heads, capacity, head_dim)."""
    valid_buffer: torch.Tensor | None = field(default=None, repr=False)
    """(b, capacity) bool; ``valid`` is its first P columns."""
    end: torch.Tensor | None = None
    """Static caches: positions filled, a 0-dim long tensor on the cache's device."""
    scratch: int = 0
    """Static caches: positions at the buffers' tail that hold a denoised block's K/V."""
    _length: int | None = None  # static caches: the host's copy of ``end``
    _past: ContextCache | None = field(default=None, repr=False)  # set by extend()
    _masks: dict = field(default_factory=dict, repr=False)  # block_mask(), per block

    @property
    def static(self) -> bool:
        return self.end is not None

    @property
    def length(self) -> int:
        if self.static:
            return self._length
        return 0 if self.valid is None else self.valid.shape[1]

    @property
    def capacity(self) -> int:
        """Positions the context may fill (the length when there are no buffers)."""
        if self.valid_buffer is None:
            return self.length
        return self.valid_buffer.shape[1] - self.scratch

    def _like(self, move, **fields) -> ContextCache:
        """A static cache with every tensor of this one passed through ``move`` (``fields``
        override attributes)."""
        buffers = {i: (move(k), move(v)) for i, (k, v) in self.buffers.items()}
        valid = None if self.valid is None else move(self.valid)
        out = ContextCache(
            keys={i: key for i, (key, _) in buffers.items()},  # a static cache's: the buffers
            values={i: value for i, (_, value) in buffers.items()},
            mamba={i: MambaStates(move(m.conv), move(m.ssm)) for i, m in self.mamba.items()},
            valid=valid,
            buffers=buffers,
            valid_buffer=valid,
            end=None if self.end is None else self.end.to(valid.device),
            scratch=self.scratch,
            # Compiled, the length is the caller's to keep (a read would specialize the graph).
            _length=None if torch.compiler.is_compiling() else self._length,
        )
        for name, value in fields.items():
            setattr(out, name, value)
        return out

    def to(self, device: torch.device, like: ContextCache | None = None) -> ContextCache:
        """This cache on ``device`` — itself when it is already there (one-device decoding).

        ``like``: the copy an earlier call made on ``device`` (towers placed apart: the
        denoiser's copy of the previous block's cache). If this cache only grew since — the
        samplers' appends and rollbacks never change a position the copy holds — just the
        positions written since are copied, into its buffers; else everything is."""
        if self.valid is None or self.valid.device == torch.device(device):
            return self
        if like is not None and self._grew_from(like):
            return self._copy_into(like)
        if self.static:
            return self._like(lambda t: t.to(device))
        # Into buffers, so the next block's copy is incremental (room: as the source's, or
        # doubling).
        return self.reserve(max(self.capacity - self.length, self.length, 64), device=device)

    def _grew_from(self, like: ContextCache) -> bool:
        return (
            like.valid_buffer is not None
            and like.static == self.static
            and set(like.buffers) == set(self.keys)
            and like.valid.shape[0] == self.valid.shape[0]
            and like.length <= self.length <= like.capacity
            and (not self.static or like.valid_buffer.shape == self.valid_buffer.shape)
        )

    def _copy_into(self, like: ContextCache) -> ContextCache:
        """This cache in ``like``'s buffers (on another device): positions [like.length,
        length) copied, the Mamba states whole (:meth:`to`)."""
        start, end, device = like.length, self.length, like.valid.device
        for i, buffers in like.buffers.items():
            for buffer, source in zip(buffers, (self.keys[i], self.values[i])):
                buffer[:, :, start:end] = source[:, :, start:end]
        like.valid_buffer[:, start:end] = self.valid[:, start:end]
        out = ContextCache(
            mamba={i: m.to(device) for i, m in self.mamba.items()},
            valid_buffer=like.valid_buffer,
            scratch=like.scratch,
        )
        width = like.valid_buffer.shape[1]
        if self.static:
            out.valid, out.end, out._length = like.valid_buffer, self.end.to(device), end
        else:
            out.valid = like.valid_buffer[:, :end]
        for i, buffers in like.buffers.items():
            out._hold(i, buffers, width if self.static else end)
        return out

    def select(self, rows: torch.Tensor) -> ContextCache:
        """The cache of batch rows ``rows`` (a long index), in that order — finished rows
        leave the batch (one gather of what the kept rows hold, buffers included)."""
        if self.static:
            return self._like(lambda t: t[rows])
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

    def reserve(
        self, room: int, static: bool = False, scratch: int = 0, device=None
    ) -> ContextCache:
        """This cache in buffers with ``room`` free positions after it (one copy, at prefill).

        ``static``: a static cache (class docstring) with ``scratch`` positions for a block's
        K/V, its capacity rounded up to a multiple of :data:`STATIC_CAPACITY_STEP` so that
        prompts of different lengths share one compiled graph. ``device``: the buffers there
        (the cache copied straight into them; :meth:`to`)."""
        if self.valid is None:
            return self
        device = self.valid.device if device is None else torch.device(device)
        if (
            self.static == static
            and self.scratch >= scratch
            and self.capacity - self.length >= room
            and self.valid.device == device
        ):
            return self
        length, valid = self.length, self.valid[:, : self.length]
        capacity = length + room
        if static:
            step = STATIC_CAPACITY_STEP
            capacity = -(-capacity // step) * step
        valid_buffer = valid.new_zeros(valid.shape[0], capacity + scratch, device=device)
        valid_buffer[:, :length] = valid
        out = ContextCache(
            mamba={i: m.to(device) for i, m in self.mamba.items()}, valid_buffer=valid_buffer
        )
        out.valid = valid_buffer if static else valid_buffer[:, :length]
        if static:
            out.end = torch.tensor(length, device=device)
            out.scratch, out._length = scratch, length
        for i, k in self.keys.items():
            buffers = tuple(
                t.new_zeros(*t.shape[:2], capacity + scratch, t.shape[3], device=device)
                for t in (k, self.values[i])
            )
            for buffer, t in zip(buffers, (k, self.values[i])):
                buffer[:, :, :length] = t[:, :, :length]
            out._hold(i, buffers, capacity + scratch if static else length)
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
        if self.static:
            return self._extend_static(valid)
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

    def _extend_static(self, valid: torch.Tensor) -> ContextCache:
        s = valid.shape[1]
        length = None
        # Compiled, the host's length is kept by the caller (compiled.py): read here, it would
        # specialize the graph to one length.
        if not torch.compiler.is_compiling():
            length = self.length + s
            if length > self.capacity:  # out of room: grow once, doubling (a new graph)
                grown = self.reserve(
                    max(2 * self.capacity, length) - self.length, True, self.scratch
                )
                return grown.extend(valid)
        self.valid_buffer.index_copy_(1, self.end + torch.arange(s, device=valid.device), valid)
        return self._like(
            lambda t: t, keys={}, values={}, end=self.end + s, _length=length, _past=self
        )

    def causal_mask(self, new: int) -> torch.Tensor | None:
        """Static caches (from :meth:`extend`): (b, 1, s, capacity + scratch) bool for the
        ``new`` newest positions' queries — every valid position up to each query's own (a
        query always sees itself). None for other caches (the attention builds its own)."""
        if not self.static:
            return None
        width = self.valid_buffer.shape[1]
        keys = torch.arange(width, device=self.end.device)
        queries = (self.end - new + torch.arange(new, device=self.end.device)).unsqueeze(1)
        seen = (keys <= queries) & self.valid_buffer.unsqueeze(1)  # (b, s, width)
        return (seen | (keys == queries)).unsqueeze(1)

    def write_kv(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new positions' k/v (b, kv_heads, s, hd) of ``layer`` (a cache from
        :meth:`extend`) → that layer's keys and values over all positions (a static cache:
        the whole buffers, :meth:`causal_mask` says which to read)."""
        past = self._past
        if self.static:
            positions = past.end + torch.arange(k.shape[2], device=k.device)
            key_buffer, value_buffer = self.buffers[layer]
            key_buffer.index_copy_(2, positions, k)
            value_buffer.index_copy_(2, positions, v)
            k, v = key_buffer, value_buffer
        elif layer in self.buffers:
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
        if self.static:  # the block's K/V in the scratch positions, after the capacity
            if k.shape[2] > self.scratch:
                raise ValueError(f"a block of {k.shape[2]} > the cache's scratch {self.scratch}")
            self._write(layer, self.capacity, k, v)
            return self.buffers[layer]
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
        # One per cache object and block shape (a static cache's end is fixed per object).
        key = (size, causal_in_block, str(device))
        if key not in self._masks:
            self._masks[key] = self._build_block_mask(size, causal_in_block, device)
        return self._masks[key]

    def _build_block_mask(self, size: int, causal_in_block: bool, device) -> torch.Tensor:
        in_block = torch.ones(size, size, dtype=torch.bool, device=device)
        if causal_in_block:
            in_block = in_block.tril()
        if self.static and self.keys:  # context up to end, then the block in the scratch
            width = self.valid_buffer.shape[1]
            keys = torch.arange(width, device=device)
            context = self.valid_buffer.to(device) & (keys < self.end.to(device))  # (b, width)
            block = torch.zeros(size, width, dtype=torch.bool, device=device)
            block[:, self.capacity : self.capacity + size] = in_block
            return (context.unsqueeze(1) | block).unsqueeze(-3)
        if self.keys:  # a cache with attention layers (an empty one: the block alone)
            b = self.valid.shape[0]
            context = self.valid.to(device).unsqueeze(1).expand(b, size, self.length)
            in_block = torch.cat([context, in_block.expand(b, size, size)], dim=-1)
        return in_block.unsqueeze(-3)
