"""Nemotron-TwoTower for transformers (``trust_remote_code``): a frozen causal context tower and
a denoiser tower over the Nemotron-H hybrid Mamba-2 / attention / MoE backbone.

Written into the export folder by ``twotower-convert export-hf``, next to verbatim copies of the
training repository's samplers (``cache.py``, ``sampling.py``, ``samplers.py``, … — they import
only torch). This file implements the small interface those samplers drive (``prefill``,
``advance``, ``denoise_block``; full-vocabulary logits) on transformers' own ``nemotron_h``
modules, so the export and Megatron decode with one algorithm; transformers' module-level
``causal_conv1d_fn`` / ``mamba2_chunk_scan`` are used, which are the causal-conv1d / mamba-ssm
kernels where those packages are installed and PyTorch otherwise.

What each tower computes (the model card; DESIGN.md §2 of the training repository):

* context tower (``self.model`` + ``self.lm_head``, a stock ``NemotronHForCausalLM``): causal
  over the clean tokens; exposes per attention layer K/V of every position and per Mamba layer
  the conv / SSM states after the last position. ``forward()`` is its causal-LM forward, so
  ``generate()``, ``pipeline("text-generation")`` and log-likelihood scoring use it unchanged.
* denoiser tower (``self.denoiser``: the same blocks, norm and head; its own weights; a plain
  module, so no transformers checkpoint renaming ever applies to it): one block of S noisy
  tokens right after the context; attention layer i attends to context layer i's K/V (positions
  before the block) and bidirectionally inside the block; Mamba layer i starts from context
  layer i's states; every layer is modulated by adaLN-single (``self.adaln``) with the
  diffusion time t:  ``x = x + (1 + gate) · mixer(norm(x) · (1 + scale) + shift)``.

Layouts: hidden states (b, s, d); attention tensors (b, heads, s, head_dim); Mamba conv state
(b, conv_kernel − 1, conv_dim), SSM state (b, mamba_heads, mamba_head_dim, ssm_state), fp32.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.nemotron_h.modeling_nemotron_h import (
    NemotronHBlock,
    NemotronHForCausalLM,
    NemotronHRMSNorm,
    causal_conv1d_fn,
    mamba2_chunk_scan,
)

from .cache import ContextCache, ContextOutput, MambaStates
from .configuration_nemotron_twotower import NemotronTwoTowerConfig
from .samplers import (
    ARConfig,
    MaskDiffusionConfig,
    MockARConfig,
    generate_ar,
    generate_mask_diffusion,
    generate_mock_ar,
)
from .sampling import TokenChoice

MAMBA, ATTENTION = "linear_attention", "full_attention"


# ---- adaLN-single time conditioning ------------------------------------------------------------


def timestep_features(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal features of t ∈ [0, 1] (scaled by 1000 like DDPM steps) → (..., dim)."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    )  # (half,)
    angles = (t.float() * 1000.0).unsqueeze(-1) * freqs  # (..., half)
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


class AdaLNSingle(nn.Module):
    """t → features → one global MLP → 3·d; layer i adds its own table → (shift, scale, gate)."""

    def __init__(self, config: NemotronTwoTowerConfig):
        super().__init__()
        self.feature_dim = config.adaln_feature_dim
        d = config.hidden_size
        self.mlp = nn.Sequential(
            nn.Linear(config.adaln_feature_dim, config.adaln_hidden_size),
            nn.SiLU(),
            nn.Linear(config.adaln_hidden_size, 3 * d),
        )
        self.tables = nn.Parameter(torch.zeros(config.num_hidden_layers, 3 * d))

    def forward(self, t_tokens: torch.Tensor) -> torch.Tensor:
        """t per token (b, s) → the shared base modulation (b, s, 3d)."""
        return self.mlp(timestep_features(t_tokens, self.feature_dim).to(self.tables.dtype))

    def modulation(self, base: torch.Tensor, layer: int) -> tuple[torch.Tensor, ...]:
        """(shift, scale, gate) of one layer, each (b, s, d)."""
        return (base + self.tables[layer]).chunk(3, dim=-1)


# ---- mixers with explicit state in / out -------------------------------------------------------


def mamba_mixer(
    mixer: nn.Module,
    hidden: torch.Tensor,
    initial: MambaStates | None,
    valid: torch.Tensor | None = None,
    position_states: bool = False,
) -> tuple[torch.Tensor, MambaStates, MambaStates | None]:
    """A ``NemotronHMamba2Mixer`` over ``hidden`` (b, s, d) from ``initial`` states (zeros if
    None) → (output (b, s, d), states after the last position, states after every position or
    None).

    ``valid`` (b, s) is False at left padding, which then leaves every state unchanged (its conv
    input and step size are zeroed). The step size is not clamped (Megatron trains without a
    ``dt`` limit).
    """
    b, s, _ = hidden.shape
    heads, head_dim = mixer.num_heads, mixer.head_dim
    groups, d_state, d_inner = mixer.n_groups, mixer.ssm_state_size, mixer.intermediate_size
    width = mixer.conv_kernel_size
    gate, xbc, dt = mixer.in_proj(hidden).split([d_inner, mixer.conv_dim, heads], dim=-1)
    dt = F.softplus(dt.float() + mixer.dt_bias.float())  # (b, s, heads)
    if valid is not None:
        keep = valid.unsqueeze(-1)  # (b, s, 1)
        xbc, dt = xbc * keep, dt * keep
    if initial is None:
        history = xbc.new_zeros(b, width - 1, mixer.conv_dim)
    else:
        history = initial.conv.to(xbc.dtype)
    window = torch.cat([history, xbc], dim=1)  # (b, w − 1 + s, conv_dim): conv inputs, oldest first
    # The conv runs over history ⊕ new inputs; the first w − 1 outputs (zero-padded) are dropped.
    conv = causal_conv1d_fn(
        window.transpose(1, 2), mixer.conv1d.weight.squeeze(1), mixer.conv1d.bias,
        activation=mixer.activation,
    )[:, :, width - 1:]  # (b, conv_dim, s)
    x, B, C = conv.transpose(1, 2).split([d_inner, groups * d_state, groups * d_state], dim=-1)
    x = x.reshape(b, s, heads, head_dim)
    B = B.reshape(b, s, groups, d_state)
    A = -torch.exp(mixer.A_log.float())  # (heads,)
    y, ssm = mamba2_chunk_scan(
        x, dt, A, B, C.reshape(b, s, groups, d_state),
        chunk_size=mixer.chunk_size, D=mixer.D,
        initial_states=None if initial is None else initial.ssm,
        dt_softplus=False, return_final_states=True,
    )  # y (b, s, heads, head_dim), ssm (b, heads, head_dim, d_state)
    y = mixer.norm(y.reshape(b, s, d_inner), gate)  # gated RMSNorm: norm(y · silu(gate))
    out = mixer.out_proj(y.to(hidden.dtype))
    final = MambaStates(conv=window[:, s:], ssm=ssm.float())
    per_position = None
    if position_states:
        # Conv state after new position k = the w − 1 inputs ending at k: window[k + 1 : k + w].
        index = torch.arange(s, device=hidden.device)[:, None] + 1 + torch.arange(
            width - 1, device=hidden.device
        )  # (s, w − 1)
        per_position = MambaStates(
            conv=window[:, index],  # (b, s, w − 1, conv_dim)
            ssm=ssm_after_each_position(x, dt, A, B, None if initial is None else initial.ssm),
        )
    return out, final, per_position


def ssm_after_each_position(
    x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, h0: torch.Tensor | None
) -> torch.Tensor:
    """SSM states after each of the s positions, (b, s, heads, head_dim, d_state), by the
    recurrence h_k = exp(dt_k·A)·h_{k−1} + dt_k·x_k ⊗ B_k — s is a drafted block of a few
    tokens (speculative decoding rolls back to one of these), so a loop is cheap and exact.

    x (b, s, heads, head_dim), dt (b, s, heads), A (heads,), B (b, s, groups, d_state)."""
    b, s, heads, head_dim = x.shape
    B = B.float().repeat_interleave(heads // B.shape[2], dim=2)  # (b, s, heads, d_state)
    state = x.new_zeros(b, heads, head_dim, B.shape[-1], dtype=torch.float32) if h0 is None else h0
    states = []
    for k in range(s):
        decay = torch.exp(dt[:, k] * A)[..., None, None]  # (b, heads, 1, 1)
        update = dt[:, k, :, None, None] * x[:, k, :, :, None].float() * B[:, k, :, None, :]
        state = state.float() * decay + update  # (b, heads, head_dim, d_state)
        states.append(state)
    return torch.stack(states, dim=1)


def attention_qkv(attention: nn.Module, hidden: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``NemotronHAttention`` projections of (b, s, d) → q (b, heads, s, hd), k/v (b, kv, s, hd)."""
    b, s, _ = hidden.shape
    shape = (b, s, -1, attention.head_dim)
    return tuple(
        proj(hidden).view(shape).transpose(1, 2)
        for proj in (attention.q_proj, attention.k_proj, attention.v_proj)
    )


def attention_out(attention: nn.Module, context: torch.Tensor) -> torch.Tensor:
    """Attention output (b, heads, s, hd) → output projection (b, s, d)."""
    b, _, s, _ = context.shape
    return attention.o_proj(context.transpose(1, 2).reshape(b, s, -1))


def causal_attention(q, k, v, key_valid: torch.Tensor | None) -> torch.Tensor:
    """The s newest positions q (b, heads, s, hd) attend causally to all P + s keys k/v
    (b, kv, P + s, hd); ``key_valid`` (b, P + s) masks left padding, and a query always sees
    itself so that fully padded rows stay finite."""
    gqa = q.shape[1] != k.shape[1]
    new, total = q.shape[2], k.shape[2]
    if new == total and key_valid is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
    query_pos = torch.arange(total - new, total, device=q.device).unsqueeze(1)  # (s, 1)
    key_pos = torch.arange(total, device=q.device).unsqueeze(0)  # (1, P + s)
    mask = key_pos <= query_pos  # (s, P + s)
    if key_valid is not None:
        mask = (mask & key_valid.unsqueeze(1)) | (key_pos == query_pos)  # (b, s, P + s)
        mask = mask.unsqueeze(1)  # (b, 1, s, P + s)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)


def block_attention(q, k, v, cache: ContextCache, layer: int, causal_in_block: bool):
    """The block's queries q (b, heads, S, hd) attend to the context K/V of ``layer`` (every
    cached position, padding masked) and to the block's own k/v (b, kv, S, hd) — bidirectional,
    or causal with ``causal_in_block``."""
    b, S = q.shape[0], q.shape[2]
    in_block = torch.ones(S, S, dtype=torch.bool, device=q.device)
    if causal_in_block:
        in_block = torch.tril(in_block)
    mask = in_block.expand(b, S, S)  # (b, S, S)
    if layer in cache.keys:
        k = torch.cat([cache.keys[layer], k], dim=2)  # (b, kv, P + S, hd)
        v = torch.cat([cache.values[layer], v], dim=2)
        context = cache.valid.unsqueeze(1).expand(b, S, cache.length)  # (b, S, P)
        mask = torch.cat([context, mask], dim=-1)  # (b, S, P + S)
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask.unsqueeze(1), enable_gqa=q.shape[1] != k.shape[1]
    )


# ---- the model ---------------------------------------------------------------------------------


class NemotronTwoTowerDenoiser(nn.Module):
    """The denoiser tower's weights: a Nemotron-H stack of transformers' ``NemotronHBlock`` s with
    its final norm and LM head (run by :meth:`NemotronTwoTowerForCausalLM.denoise_block`)."""

    def __init__(self, config: NemotronTwoTowerConfig):
        super().__init__()
        self.embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(
            [NemotronHBlock(config, layer_idx=i) for i in range(config.num_hidden_layers)]
        )
        self.norm_f = NemotronHRMSNorm(config.hidden_size, eps=config.layer_norm_epsilon)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)



class NemotronTwoTowerForCausalLM(NemotronHForCausalLM):
    """Both towers and adaLN-single; the card's ``place_towers_on_devices`` and
    ``generate_mask_diffusion`` / ``generate_mock_ar`` / ``generate_ar``.

    ``self.model`` / ``self.lm_head`` are the context tower (what ``forward()`` runs),
    ``self.denoiser`` is the denoiser tower, ``self.adaln`` its time conditioning. ``.to()`` / ``.cuda()`` move both towers (AR-only use on one device).
    """

    config_class = NemotronTwoTowerConfig

    def __init__(self, config: NemotronTwoTowerConfig):
        super().__init__(config)
        self.denoiser = NemotronTwoTowerDenoiser(config)
        self.adaln = AdaLNSingle(config)
        self.post_init()

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, AdaLNSingle):  # zero-initialised: the denoiser starts as the backbone
            nn.init.zeros_(module.tables)
            nn.init.zeros_(module.mlp[2].weight)
            nn.init.zeros_(module.mlp[2].bias)

    # --- devices --------------------------------------------------------------------------------

    def place_towers_on_devices(self, context_device, denoiser_device):
        """Context tower on ``context_device``, denoiser + adaLN on ``denoiser_device``; the
        samplers move the caches and tokens between them."""
        self.model.to(context_device)
        self.lm_head.to(context_device)
        self.denoiser.to(denoiser_device)
        self.adaln.to(denoiser_device)
        return self

    @property
    def context_device(self) -> torch.device:
        return self.model.embeddings.weight.device

    @property
    def denoiser_device(self) -> torch.device:
        return self.denoiser.embeddings.weight.device

    # --- the samplers' interface (cache.DecodingModel) ------------------------------------------

    @torch.no_grad()
    def prefill(self, tokens, valid=None, logits="last") -> ContextOutput:
        """Context caches for left-padded prompts (b, P); ``valid`` (b, P) marks real tokens."""
        return self._context(tokens, ContextCache(), valid, logits, position_states=False)

    @torch.no_grad()
    def advance(self, cache, tokens, logits="last", position_states=False) -> ContextOutput:
        """Extend the context caches over committed tokens (b, s); with ``position_states`` also
        the Mamba states after each of the s positions ((b, s, …) per layer)."""
        return self._context(tokens, cache, None, logits, position_states)

    def _context(self, tokens, cache, valid, logits, position_states) -> ContextOutput:
        if valid is None:
            valid = torch.ones(tokens.shape, dtype=torch.bool, device=tokens.device)
        past = cache.valid if cache.valid is not None else valid[:, :0]
        new = ContextCache(valid=torch.cat([past, valid], dim=1))  # (b, P + s)
        padded = not bool(new.valid.all())  # unmasked fast paths unless some position is padding
        key_valid, valid = (new.valid, valid) if padded else (None, None)
        out = ContextOutput(cache=new, logits=None)
        hidden = self.model.embeddings(tokens)  # (b, s, d)
        for i, block in enumerate(self.model.layers):
            normed = block.norm(hidden)
            if block.block_type == MAMBA:
                mixed, new.mamba[i], per_position = mamba_mixer(
                    block.mixer, normed, cache.mamba.get(i), valid, position_states
                )
                if per_position is not None:
                    out.position_states[i] = per_position
            elif block.block_type == ATTENTION:
                q, k, v = attention_qkv(block.mixer, normed)
                if i in cache.keys:  # (b, kv, P + s, hd): cached keys, then the new ones
                    k = torch.cat([cache.keys[i], k], dim=2)
                    v = torch.cat([cache.values[i], v], dim=2)
                new.keys[i], new.values[i] = k, v
                mixed = attention_out(block.mixer, causal_attention(q, k, v, key_valid))
            else:
                mixed = block.mixer(normed)
            hidden = hidden + mixed
        if logits == "all":
            out.logits = self.lm_head(self.model.norm_f(hidden)).float()  # (b, s, V)
        elif logits == "last":
            out.logits = self.lm_head(self.model.norm_f(hidden[:, -1:])).float()  # (b, 1, V)
        elif logits != "none":
            raise ValueError(f"logits={logits!r}; use 'all', 'last' or 'none'")
        return out

    @torch.no_grad()
    def denoise_block(self, cache, block_tokens, t, *, causal_in_block=False) -> torch.Tensor:
        """Denoiser logits (b, S, V) for the block of S tokens right after ``cache`` (an empty
        cache: the first block of a sequence) at diffusion time ``t`` (b,)."""
        tower = self.denoiser
        t_tokens = t.reshape(-1, 1).expand_as(block_tokens).float()  # (b, S)
        base = self.adaln(t_tokens)  # (b, S, 3d)
        hidden = tower.embeddings(block_tokens)  # (b, S, d)
        for i, block in enumerate(tower.layers):
            shift, scale, gate = self.adaln.modulation(base, i)
            normed = block.norm(hidden) * (1 + scale) + shift
            if block.block_type == MAMBA:
                mixed, _, _ = mamba_mixer(block.mixer, normed, cache.mamba.get(i))
            elif block.block_type == ATTENTION:
                q, k, v = attention_qkv(block.mixer, normed)
                attended = block_attention(q, k, v, cache, i, causal_in_block)
                mixed = attention_out(block.mixer, attended)
            else:
                mixed = block.mixer(normed)
            hidden = hidden + (1 + gate) * mixed
        return tower.lm_head(tower.norm_f(hidden)).float()

    # --- the model card's generation API ----------------------------------------------------------
    # Thin wrappers: (b, P) ids + left-padding attention_mask → one of the shared samplers →
    # (b, P + new) ids like generate(), rows that stopped early padded with pad_token_id.

    def generate_mask_diffusion(
        self, input_ids, max_new_tokens=128, block_size=None, steps_per_block=None,
        mask_token_id=None, temperature=0.0, confidence_threshold=0.8, eos_token_id=None,
        attention_mask=None, top_k=None, top_p=None, pad_token_id=None, generator=None,
    ) -> torch.LongTensor:
        """Block-wise mask diffusion with confidence unmasking (the card's default mode)."""
        block_size = block_size or self.config.block_size
        return self._run_sampler(
            generate_mask_diffusion, MaskDiffusionConfig, input_ids, attention_mask,
            temperature, top_k, top_p, eos_token_id, pad_token_id, generator,
            max_new_tokens=max_new_tokens, block_size=block_size,
            steps_per_block=steps_per_block or block_size,
            mask_token_id=self._mask_id(mask_token_id),
            confidence_threshold=confidence_threshold,
        )

    def generate_mock_ar(
        self, input_ids, max_new_tokens=128, temperature=0.0, eos_token_id=None,
        attention_mask=None, mask_token_id=None, top_k=None, top_p=None, pad_token_id=None,
        generator=None,
    ) -> torch.LongTensor:
        """Two-tower AR: the denoiser predicts one [MASK] after the context, token by token."""
        return self._run_sampler(
            generate_mock_ar, MockARConfig, input_ids, attention_mask,
            temperature, top_k, top_p, eos_token_id, pad_token_id, generator,
            max_new_tokens=max_new_tokens, mask_token_id=self._mask_id(mask_token_id),
        )

    def generate_ar(
        self, input_ids, max_new_tokens=128, temperature=0.0, eos_token_id=None,
        attention_mask=None, top_k=None, top_p=None, pad_token_id=None, generator=None,
    ) -> torch.LongTensor:
        """Standard cached AR decoding with the context tower alone."""
        return self._run_sampler(
            generate_ar, ARConfig, input_ids, attention_mask,
            temperature, top_k, top_p, eos_token_id, pad_token_id, generator,
            max_new_tokens=max_new_tokens,
        )

    def _mask_id(self, mask_token_id):
        return self.config.mask_token_id if mask_token_id is None else mask_token_id

    def _run_sampler(
        self, sampler, config_class, input_ids, attention_mask, temperature, top_k, top_p,
        eos_token_id, pad_token_id, generator, **options,
    ) -> torch.LongTensor:
        """``eos_token_id`` / ``pad_token_id`` default to the config's; ``temperature`` 0 is
        greedy; ``generator`` seeds sampling."""
        if eos_token_id is None:
            eos_token_id = self.config.eos_token_id
        if isinstance(eos_token_id, (list, tuple)):
            eos_token_id = eos_token_id[0]
        if pad_token_id is None:
            pad_token_id = self.config.pad_token_id
        config = config_class(
            choice=TokenChoice(temperature=temperature, top_k=top_k, top_p=top_p),
            eos_token_id=eos_token_id, pad_token_id=pad_token_id, **options,
        )
        out = sampler(self, prompts_of(input_ids, attention_mask), config, generator=generator)
        width = max(len(row) for row in out.tokens)
        new = torch.full(
            (len(out.tokens), width), pad_token_id, dtype=torch.long, device=input_ids.device
        )  # (b, longest continuation)
        for row, tokens in enumerate(out.tokens):
            new[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        return torch.cat([input_ids, new], dim=1)  # (b, P + new)


def prompts_of(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> list[list[int]]:
    """Left-padded ids (b, P) and their attention mask → the token list of each prompt."""
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be (batch, length), got shape {tuple(input_ids.shape)}")
    if attention_mask is None:
        return input_ids.tolist()
    mask = attention_mask.to(torch.bool)
    if bool((mask[:, :-1] & ~mask[:, 1:]).any()):
        raise ValueError(
            "attention_mask has padding after a real token; pad prompts on the left "
            "(tokenizer.padding_side = 'left')"
        )
    return [row[keep].tolist() for row, keep in zip(input_ids, mask)]
