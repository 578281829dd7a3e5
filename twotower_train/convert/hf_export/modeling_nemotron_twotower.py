"""Nemotron-TwoTower for transformers (``trust_remote_code``): a frozen causal context tower and
a denoiser tower over the Nemotron-H hybrid Mamba-2 / attention / MoE backbone.

Written into the export folder by ``twotower-convert export-hf``, next to verbatim copies of the
training repository's samplers (``cache.py``, ``sampling.py``, ``samplers.py``, … — they import
only torch). This file implements the small interface those samplers drive (``prefill``,
``advance``, ``denoise_block``; full-vocabulary logits) on transformers' own ``nemotron_h``
modules (the stateful mixer forwards are in ``mixers_nemotron_twotower.py``), so the export and
Megatron decode with one algorithm.

What each tower computes (the model card):

* context tower (``self.model`` + ``self.lm_head``, a stock ``NemotronHForCausalLM``): causal
  over the clean tokens; exposes per attention layer K/V of every position and per Mamba layer
  the conv / SSM states after the last position. ``forward()`` is its causal-LM forward, so
  ``generate()``, ``pipeline("text-generation")`` and log-likelihood scoring use it unchanged.
* denoiser tower (``self.denoiser``: the same blocks, norm and head; its own weights; a plain
  module, so no transformers checkpoint renaming ever applies to it): one block of S noisy
  tokens right after the context; attention layer i attends to context layer i's K/V (positions
  before the block) and bidirectionally inside the block; Mamba layer i starts from context
  layer i's states; every layer is modulated by adaLN-single with the diffusion time t:
  ``t_emb = t_block(t_embedder(t))``, (shift, scale, gate) = ``scale_shift_tables[i]`` +
  ``t_emb`` viewed as (3, d); Mamba and attention layers ``x + gate · mixer(norm(x · (1 + scale)
  + shift))``, MoE and MLP layers ``x + gate · mixer(norm(x) · (1 + scale) + shift)``. With
  ``t=None`` the denoiser runs unmodulated, ``x + mixer(norm(x))``.

Layouts: hidden states (b, s, d); the caches as ``cache.py`` describes them.
"""

import math

import torch
from torch import nn
from transformers.models.nemotron_h.modeling_nemotron_h import (
    NemotronHBlock,
    NemotronHForCausalLM,
    NemotronHRMSNorm,
)

from .cache import ContextCache, ContextOutput
from .card import CardGeneration
from .configuration_nemotron_twotower import NemotronTwoTowerConfig
from .mixers_nemotron_twotower import (
    attention_out,
    attention_qkv,
    block_attention,
    causal_attention,
    mamba_mixer,
)

MAMBA, ATTENTION = "linear_attention", "full_attention"


# ---- adaLN-single time conditioning (the released formulation) --------------------------------

FREQUENCY_DIM = 256


def timestep_features(t: torch.Tensor, dim: int = FREQUENCY_DIM, max_period: float = 10_000.0):
    """Sinusoidal features [cos, sin] of 1000·t, t ∈ [0, 1] → (..., dim), fp32."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    )  # (half,)
    angles = (t.float() * 1000.0).unsqueeze(-1) * freqs  # (..., half)
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


class TimestepEmbedder(nn.Module):
    """t → 256 sinusoidal features → Linear(256, d) → SiLU → Linear(d, d)."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(FREQUENCY_DIM, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size)
        )

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_features(t).to(self.mlp[0].weight.dtype))


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


class NemotronTwoTowerForCausalLM(CardGeneration, NemotronHForCausalLM):
    """Both towers and adaLN-single; the card's ``place_towers_on_devices`` and (from
    ``card.py``, shared with the training repository) ``generate_mask_diffusion`` /
    ``generate_mock_ar`` / ``generate_ar``, the forward counts of the last call in
    ``last_generation`` / ``_last_nfe``.

    ``self.model`` / ``self.lm_head`` are the context tower (what ``forward()`` runs),
    ``self.denoiser`` is the denoiser tower, ``self.t_embedder`` / ``self.t_block`` /
    ``self.scale_shift_tables`` its time conditioning (the released names). ``.to()`` /
    ``.cuda()`` move both towers (AR-only use on one device).
    """

    config_class = NemotronTwoTowerConfig

    def __init__(self, config: NemotronTwoTowerConfig):
        super().__init__(config)
        self.denoiser = NemotronTwoTowerDenoiser(config)
        d = config.hidden_size
        self.t_embedder = TimestepEmbedder(d)
        self.t_block = nn.Sequential(nn.SiLU(), nn.Linear(d, 3 * d))
        self.scale_shift_tables = nn.ParameterList(
            [nn.Parameter(torch.zeros(3, d)) for _ in range(config.num_hidden_layers)]
        )
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        # The identity modulation, so the denoiser starts as the backbone: the last t_block
        # Linear zero, the tables' gate rows 1 and their shift / scale rows 0. (The parent's
        # __init__ already initialises, before these modules exist.)
        t_block = getattr(self, "t_block", None)
        if t_block is not None and module is t_block[1]:
            nn.init.zeros_(module.weight)
            nn.init.zeros_(module.bias)
        elif module is getattr(self, "scale_shift_tables", None):
            for table in module:
                table.zero_()
                table[2] = 1.0

    # --- devices --------------------------------------------------------------------------------

    def place_towers_on_devices(self, context_device, denoiser_device):
        """Context tower on ``context_device``, denoiser + adaLN on ``denoiser_device``; the
        samplers move the caches and tokens between them."""
        self.model.to(context_device)
        self.lm_head.to(context_device)
        for module in (self.denoiser, self.t_embedder, self.t_block, self.scale_shift_tables):
            module.to(denoiser_device)
        return self

    @property
    def denoiser_shift(self) -> bool:
        """Whether the denoiser's output at position i scores the token at i + 1 (the samplers
        then score a block's first position with the context tower's last logits)."""
        return bool(self.config.denoiser_shift)

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
        cache: the first block of a sequence) at diffusion time ``t`` (b,); ``t=None`` runs the
        denoiser unmodulated."""
        tower = self.denoiser
        d = self.config.hidden_size
        t_emb = None
        if t is not None:
            t_tokens = t.reshape(-1, 1).expand_as(block_tokens).float()  # (b, S)
            t_emb = self.t_block(self.t_embedder(t_tokens)).unflatten(-1, (3, d))  # (b, S, 3, d)
        hidden = tower.embeddings(block_tokens)  # (b, S, d)
        for i, block in enumerate(tower.layers):
            sequence_mixer = block.block_type in (MAMBA, ATTENTION)
            if t_emb is None:
                normed = block.norm(hidden)
            else:
                shift, scale, gate = (self.scale_shift_tables[i] + t_emb).unbind(-2)
                if sequence_mixer:  # Mamba / attention: modulate, then normalise
                    normed = block.norm(hidden * (1 + scale) + shift)
                else:  # MoE / MLP: normalise, then modulate
                    normed = block.norm(hidden) * (1 + scale) + shift
            if block.block_type == MAMBA:
                mixed, _, _ = mamba_mixer(block.mixer, normed, cache.mamba.get(i))
            elif block.block_type == ATTENTION:
                q, k, v = attention_qkv(block.mixer, normed)
                attended = block_attention(q, k, v, cache, i, causal_in_block)
                mixed = attention_out(block.mixer, attended)
            else:
                mixed = block.mixer(normed)
            hidden = hidden + (mixed if t_emb is None else gate * mixed)
        return tower.lm_head(tower.norm_f(hidden)).float()
