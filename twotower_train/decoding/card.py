"""The model card's generation API on token-id tensors: ``generate_mask_diffusion``,
``generate_mock_ar`` and ``generate_ar`` with the released code's keyword names and defaults.

:class:`CardGeneration` is a mixin for a model that implements the samplers' interface
(:class:`~.interface.DecodingModel`) and has a ``config`` with ``pad_token_id``: the Hugging Face
export's ``NemotronTwoTowerForCausalLM`` inherits it (this file is shipped verbatim next to the
modeling code). Each method takes ``input_ids`` (b, P), left-padded with an ``attention_mask``
when the prompts differ in length, and returns (b, P + new) ids like ``generate()``: the
prompts, then each row's new tokens, rows that stopped early filled with ``pad_token_id``.

Released keywords and defaults: ``max_new_tokens=128``, ``block_size=16``,
``steps_per_block=16``, ``mask_token_id=3``, ``temperature=0.0`` (greedy), ``top_k=None``,
``confidence_threshold=0.9``, ``eos_token_id=None`` (no EOS stop), ``step_callback=None``
(:data:`~.unmasking.StepCallback`). Our additions, keyword-only: ``attention_mask``, ``top_p``,
``pad_token_id`` (default: the config's), ``generator`` (seeds sampling) and ``compile``
(the decoding forwards under ``torch.compile``, :mod:`.compiled`). Unlike the released
code, ``max_new_tokens`` need not be a multiple of ``block_size`` and a row's tokens end at its
EOS (``samplers`` module docstring).

What the last call cost: ``model.last_generation`` (:class:`~.batching.Generation`:
``denoiser_forwards``, ``context_forwards``, ``tokens_per_forward`` …) and ``model._last_nfe``
(the released attribute: denoiser forwards of the last call, batched)::

    out = model.generate_mask_diffusion(ids, max_new_tokens=64, confidence_threshold=0.8)
    print(model._last_nfe, model.last_generation.tokens_per_forward)
"""

from __future__ import annotations

import torch

from .batching import Generation
from .samplers import (
    ARConfig,
    MaskDiffusionConfig,
    MockARConfig,
    generate_ar,
    generate_mask_diffusion,
    generate_mock_ar,
)
from .sampling import TokenChoice


class CardGeneration:
    """The card's ``generate_*`` methods (module docstring)."""

    last_generation: Generation | None = None
    """What the last ``generate_*`` call produced and cost."""
    _last_nfe: int = 0
    """Denoiser forwards of the last ``generate_*`` call (the released attribute)."""

    def generate_mask_diffusion(
        self,
        input_ids,
        max_new_tokens=128,
        block_size=16,
        steps_per_block=16,
        mask_token_id=3,
        temperature=0.0,
        top_k=None,
        confidence_threshold=0.9,
        eos_token_id=None,
        step_callback=None,
        *,
        attention_mask=None,
        top_p=None,
        pad_token_id=None,
        generator=None,
        compile=False,
    ) -> torch.LongTensor:
        """Block-wise mask diffusion with confidence unmasking (the card's default mode)."""
        config = MaskDiffusionConfig(
            **self._shared(
                max_new_tokens, temperature, top_k, top_p, eos_token_id, pad_token_id, compile
            ),
            mask_token_id=mask_token_id,
            block_size=block_size,
            steps_per_block=steps_per_block,
            confidence_threshold=confidence_threshold,
        )
        return self._run(
            generate_mask_diffusion,
            config,
            input_ids,
            attention_mask,
            generator=generator,
            step_callback=step_callback,
        )

    def generate_mock_ar(
        self,
        input_ids,
        max_new_tokens=128,
        temperature=0.0,
        top_k=None,
        top_p=None,
        eos_token_id=None,
        *,
        attention_mask=None,
        pad_token_id=None,
        generator=None,
        compile=False,
    ) -> torch.LongTensor:
        """Two-tower AR: the unmodulated denoiser on the last committed token predicts the next."""
        config = MockARConfig(
            **self._shared(
                max_new_tokens, temperature, top_k, top_p, eos_token_id, pad_token_id, compile
            )
        )
        return self._run(generate_mock_ar, config, input_ids, attention_mask, generator=generator)

    def generate_ar(
        self,
        input_ids,
        max_new_tokens=128,
        temperature=0.0,
        top_k=None,
        top_p=None,
        eos_token_id=None,
        *,
        attention_mask=None,
        pad_token_id=None,
        generator=None,
        compile=False,
    ) -> torch.LongTensor:
        """Standard cached AR decoding with the context tower alone."""
        config = ARConfig(
            **self._shared(
                max_new_tokens, temperature, top_k, top_p, eos_token_id, pad_token_id, compile
            )
        )
        return self._run(generate_ar, config, input_ids, attention_mask, generator=generator)

    def _shared(
        self, max_new_tokens, temperature, top_k, top_p, eos_token_id, pad_token_id, compile
    ):
        """The config fields every mode takes; ``pad_token_id`` defaults to the config's (or 0)."""
        if pad_token_id is None:
            pad_token_id = getattr(self.config, "pad_token_id", None)
        return {
            "max_new_tokens": max_new_tokens,
            "choice": TokenChoice(temperature=temperature, top_k=top_k, top_p=top_p),
            "eos_token_id": eos_token_id,
            "pad_token_id": 0 if pad_token_id is None else pad_token_id,
            "compile": compile,
        }

    def _run(self, sampler, config, input_ids, attention_mask, **options) -> torch.LongTensor:
        self.last_generation = None
        out = sampler(self, prompts_of(input_ids, attention_mask), config, **options)
        self.last_generation, self._last_nfe = out, out.denoiser_forwards
        width = max(len(row) for row in out.tokens)
        new = torch.full(
            (len(out.tokens), width), config.pad_token_id, dtype=torch.long, device=input_ids.device
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
