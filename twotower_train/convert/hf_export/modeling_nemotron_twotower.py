"""Nemotron-TwoTower for transformers (``trust_remote_code``): a frozen causal context tower and
a denoiser tower over the Nemotron-H hybrid Mamba-2 / attention / MoE backbone, under the module
names of NVIDIA's released ``NemotronHTwoTowerForCausalLM`` (so the released layout loads with
no missing or unexpected keys). Written into the export folder by ``twotower-convert export-hf``
next to verbatim copies of the training repository's samplers (``cache.py``, ``samplers.py``, …
— torch only); this file implements the interface they drive (``prefill``, ``advance``,
``denoise_block``) on transformers' ``nemotron_h`` modules (stateful mixer forwards:
``mixers_nemotron_twotower.py``), so the export and Megatron decode with one algorithm.

* context tower (``context_tower``, a stock ``NemotronHModel``, + ``context_lm_head``): causal
  over the clean tokens; exposes per attention layer K/V and per Mamba layer the conv / SSM
  states. ``forward()`` is its causal-LM forward (``generate()``, pipelines, scoring).
* denoiser tower (``denoiser_tower``, another ``NemotronHModel``, + ``lm_head``, the denoiser's
  head as released): one block of S noisy tokens after the context; attention layer i attends to
  context layer i's K/V and bidirectionally inside the block; Mamba layer i starts from context
  layer i's states; adaLN-single with the diffusion time t (``adaln_nemotron_twotower.py``):
  Mamba and attention layers ``x + gate · mixer(norm(x · (1 + scale) + shift))``, MoE and MLP
  layers ``x + gate · mixer(norm(x) · (1 + scale) + shift)``; ``t=None``: unmodulated.

Layouts: hidden states (b, s, d); the caches as ``cache.py`` describes them.
"""

import torch
from torch import nn
from transformers.modeling_outputs import MoeCausalLMOutputWithPast
from transformers.modeling_utils import slice_logits_to_keep
from transformers.models.nemotron_h.modeling_nemotron_h import (
    NemotronHForCausalLM,
    NemotronHModel,
    NemotronHPreTrainedModel,
)

from .adaln_nemotron_twotower import TimestepEmbedder, scale_shift_tables, time_block
from .cache import ContextCache
from .card import CardGeneration
from .configuration_nemotron_twotower import NemotronTwoTowerConfig
from .interface import ContextOutput
from .mixers_nemotron_twotower import (
    attention_out,
    attention_qkv,
    block_attention,
    causal_attention,
    mamba_mixer,
)
from .moe_nemotron_twotower import moe_forward

MAMBA, ATTENTION, MOE = "linear_attention", "full_attention", "moe"


class NemotronHTwoTowerForCausalLM(CardGeneration, NemotronHForCausalLM):
    """Both towers and adaLN-single (the released module names, module docstring); the card's
    ``place_towers_on_devices`` and (from ``card.py``, shared with the training repository)
    ``generate_mask_diffusion`` / ``generate_mock_ar`` / ``generate_ar``, the forward counts of
    the last call in ``last_generation`` / ``_last_nfe``. Generation plumbing is
    ``NemotronHForCausalLM``'s."""

    config_class = NemotronTwoTowerConfig

    def __init__(self, config: NemotronTwoTowerConfig):
        NemotronHPreTrainedModel.__init__(self, config)  # not the parent's single tower
        d = config.hidden_size
        self.vocab_size = config.vocab_size
        self.context_tower = NemotronHModel(config)
        self.context_lm_head = nn.Linear(d, config.vocab_size, bias=False)
        self.denoiser_tower = NemotronHModel(config)
        self.lm_head = nn.Linear(d, config.vocab_size, bias=False)
        self.t_embedder = TimestepEmbedder(d)
        self.t_block = time_block(d)
        self.scale_shift_tables = scale_shift_tables(d, config.num_hidden_layers)
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        # The identity modulation, so the denoiser starts as the backbone: the last t_block
        # Linear zero, the tables' gate rows 1 and their shift / scale rows 0.
        t_block = getattr(self, "t_block", None)
        if t_block is not None and module is t_block[1]:
            nn.init.zeros_(module.weight)
            nn.init.zeros_(module.bias)
        elif module is getattr(self, "scale_shift_tables", None):
            for table in module:
                table.zero_()
                table[2] = 1.0

    def get_input_embeddings(self):
        return self.context_tower.embeddings

    def set_input_embeddings(self, value):
        self.context_tower.embeddings = value

    def get_output_embeddings(self):
        return self.context_lm_head

    def set_output_embeddings(self, value):
        self.context_lm_head = value

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        cache=None,
        inputs_embeds=None,
        labels=None,
        use_cache=None,
        logits_to_keep=0,
        **kwargs,
    ):
        """The context tower's causal-LM forward (what ``generate()`` and pipelines run)."""
        outputs = self.context_tower(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=kwargs.pop("past_key_values", cache),
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        logits = self.context_lm_head(slice_logits_to_keep(outputs[0], logits_to_keep)).float()
        loss = None if labels is None else self.loss_function(logits, labels, self.vocab_size)
        return MoeCausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )

    # --- devices --------------------------------------------------------------------------------

    def place_towers_on_devices(self, context_device, denoiser_device):
        """Context tower on ``context_device``, denoiser + adaLN on ``denoiser_device``; the
        samplers move the caches and tokens between them."""
        self.context_tower.to(context_device)
        self.context_lm_head.to(context_device)
        for module in (
            self.denoiser_tower,
            self.lm_head,
            self.t_embedder,
            self.t_block,
            self.scale_shift_tables,
        ):
            module.to(denoiser_device)
        return self

    @property
    def denoiser_shift(self) -> bool:
        """Whether the denoiser's output at position i scores the token at i + 1 (the samplers
        then score a block's first position with the context tower's last logits)."""
        return bool(self.config.denoiser_shift)

    @property
    def context_device(self) -> torch.device:
        return self.context_tower.embeddings.weight.device

    @property
    def denoiser_device(self) -> torch.device:
        return self.denoiser_tower.embeddings.weight.device

    # --- the samplers' interface (interface.DecodingModel) ------------------------------------------

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
        # Padding masks only where a position may be padding: a prompt batch with padding
        # (read once, at prefill) or any cache (earlier padding, speculative holes — masked
        # without asking, so an advance reads nothing back from the device).
        padded = valid is not None and not bool(valid.all())
        if valid is None:
            valid = torch.ones(tokens.shape, dtype=torch.bool, device=tokens.device)
        new = cache.extend(valid)  # valid (b, P + s); K/V written per layer below
        mask = new.causal_mask(tokens.shape[1])  # a static cache's (compiled decoding)
        key_valid = None if mask is not None else new.valid if padded or cache.length else None
        valid = valid if padded else None
        out = ContextOutput(cache=new, logits=None)
        tower = self.context_tower
        hidden = tower.embeddings(tokens)  # (b, s, d)
        for i, block in enumerate(tower.layers):
            normed = block.norm(hidden)
            if block.block_type == MAMBA:
                mixed, new.mamba[i], per_position = mamba_mixer(
                    block.mixer, normed, cache.mamba.get(i), valid, position_states
                )
                if per_position is not None:
                    out.position_states[i] = per_position
            elif block.block_type == ATTENTION:
                q, k, v = attention_qkv(block.mixer, normed)
                k, v = new.write_kv(i, k, v)  # (b, kv, P + s, hd): cached keys, then the new
                mixed = attention_out(block.mixer, causal_attention(q, k, v, key_valid, mask))
            elif block.block_type == MOE:  # routed experts without a per-expert loop
                mixed = moe_forward(block.mixer, normed)
            else:
                mixed = block.mixer(normed)
            hidden = hidden + mixed
        if logits == "all":
            out.logits = self.context_lm_head(tower.norm_f(hidden)).float()  # (b, s, V)
        elif logits == "last":
            out.logits = self.context_lm_head(tower.norm_f(hidden[:, -1:])).float()  # (b, 1, V)
        elif logits != "none":
            raise ValueError(f"logits={logits!r}; use 'all', 'last' or 'none'")
        return out

    @torch.no_grad()
    def denoise_block(self, cache, block_tokens, t, *, causal_in_block=False) -> torch.Tensor:
        """Denoiser logits (b, S, V) for the block of S tokens right after ``cache`` (an empty
        cache: the first block of a sequence) at diffusion time ``t`` (b,); ``t=None`` runs the
        denoiser unmodulated."""
        tower = self.denoiser_tower
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
            elif block.block_type == MOE:  # routed experts without a per-expert loop
                mixed = moe_forward(block.mixer, normed)
            else:
                mixed = block.mixer(normed)
            hidden = hidden + (mixed if t_emb is None else gate * mixed)
        return self.lm_head(tower.norm_f(hidden)).float()
