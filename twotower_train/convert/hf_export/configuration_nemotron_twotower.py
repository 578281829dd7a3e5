"""Configuration of a Nemotron-TwoTower export.

Written into every export folder by ``twotower-convert export-hf``; imports only transformers.
The backbone fields are ``NemotronHConfig``'s (both towers are the same Nemotron-H stack), and so
is ``model_type``: ``nemotron_h``, as in NVIDIA's released two-tower config (tokenizers and
configs then load without remote code); ``architectures`` (the released
``NemotronHTwoTowerForCausalLM``) and ``auto_map`` name the two-tower classes. The fields below
are the two-tower additions, with the released code's defaults (its config.json has none of
them); transformers ≥ 5 turns annotated class attributes into config fields
(``PreTrainedConfig.__init_subclass__``).
"""

from transformers.models.nemotron_h.configuration_nemotron_h import NemotronHConfig


class NemotronTwoTowerConfig(NemotronHConfig):
    block_size: int = 16
    """Default sampling block size S of ``generate_mask_diffusion`` (the released model: 16)."""
    mask_token_id: int = 3
    """The diffusion [MASK] id the denoiser was trained with."""
    denoiser_shift: bool = False
    """True: the denoiser's output at position i scores the token at i + 1 and a block's first
    position is scored by the context tower (the training repository's ``model.denoiser_shift``)."""
