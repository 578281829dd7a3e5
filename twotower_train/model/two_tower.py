"""TwoTowerModel: a frozen causal context tower + a trainable denoiser tower (docs/architecture.md).

Both towers are the same Nemotron-H backbone (Megatron-Core ``HybridModel``) and start from the
same weights. The context tower reads the clean sequence causally and hands each denoiser layer
the matching layer's K/V and Mamba block-boundary states; the denoiser fills masked blocks.

Freezing happens here and only here (:meth:`TwoTowerModel._freeze_context_tower`): no
``requires_grad``, eval mode, run under ``torch.no_grad()``, expert-bias updates off, and
:meth:`trainable_parameters` (what the optimizer and DDP get) holds denoiser parameters only.
The context tower is still TP/EP-sharded like the denoiser.

Two ways in:

* training — :meth:`forward` (vectorised: context tower once over the clean sequence, denoiser
  over all noisy blocks at once);
* sampling — :meth:`prefill` → :meth:`denoise_block` (any number of times) → :meth:`advance`
  over the committed block → …, for a left-padded batch of prompts. For sampling the towers may
  live on two devices (:meth:`place_towers`); the samplers move caches and tokens between them.

Example (CPU)::

    from twotower_train import distributed
    from twotower_train.model.config import preset
    from twotower_train.model.two_tower import TwoTowerModel
    distributed.initialize(seed=0)
    model = TwoTowerModel.build(preset("tiny"))
"""

from __future__ import annotations

import contextlib

import torch
from megatron.core import parallel_state
from megatron.core import utils as megatron_utils
from megatron.core.models.hybrid.hybrid_model import HybridModel
from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region
from megatron.core.transformer import TransformerConfig
from megatron.core.transformer.module import MegatronModule

from twotower_train import distributed
from twotower_train.decoding.cache import ContextCache
from twotower_train.decoding.interface import ContextOutput
from twotower_train.errors import ConfigError
from twotower_train.model.adaln import AdaLNSingle
from twotower_train.model.backbone import build_backbone, denoiser_stack_spec, transformer_config
from twotower_train.model.config import BackboneConfig, Recompute
from twotower_train.model.context_tower import ContextTower
from twotower_train.model.denoiser import BlockwiseConditioning, CacheConditioning, Denoiser


def denoiser_scan_dtype(cfg: BackboneConfig) -> torch.dtype | None:
    """The torch dtype of ``model.denoiser_scan_dtype`` (None: the activation dtype)."""
    return torch.float32 if cfg.denoiser_scan_dtype == "fp32" else None


@torch._dynamo.substitute_in_graph(megatron_utils.get_tensor_model_parallel_group_if_none)
def _group_if_none(tp_group, is_expert=False, check_initialized=True):
    """What compiled code runs for Megatron-Core's helper of that name: the same group, without
    its deprecation warning — which ``RowParallelLinear`` triggers on every forward (it passes
    ``tp_group=None`` itself) and which would break every compiled decoding graph there."""
    if not torch.distributed.is_initialized():
        return None
    if not parallel_state.is_initialized() or tp_group is not None:
        return tp_group
    if is_expert:
        return parallel_state.get_expert_tensor_parallel_group(check_initialized=check_initialized)
    return parallel_state.get_tensor_model_parallel_group(check_initialized=check_initialized)


def _gather_vocab(logits: torch.Tensor) -> torch.Tensor:
    """Vocab-parallel logits → full vocabulary. The group is passed: without it Megatron-Core
    warns on every call, which breaks a compiled decoding graph."""
    group = parallel_state.get_tensor_model_parallel_group()
    return gather_from_tensor_model_parallel_region(logits, group=group)


class TwoTowerModel(MegatronModule):
    def __init__(
        self,
        cfg: BackboneConfig,
        config: TransformerConfig,
        *,
        use_te: bool | None = None,
        denoiser_on_meta: bool = False,
    ):
        """``denoiser_on_meta``: the denoiser and adaLN-single are built on the ``meta`` device
        (no memory, no initialisation) — a context-only load, which never fills them."""
        super().__init__(config=config)
        self.cfg = cfg
        spec = denoiser_stack_spec(cfg, use_te=use_te)
        self.context_tower = ContextTower(build_backbone(cfg, config, spec=spec))
        with torch.device("meta") if denoiser_on_meta else contextlib.nullcontext():
            denoiser_backbone = build_backbone(cfg, config, spec=spec)
            adaln = AdaLNSingle(
                cfg.hidden_size,
                len(cfg.pattern),
                sequence_parallel=config.sequence_parallel,
                dtype=config.params_dtype,
            )
        if not denoiser_on_meta:
            # Same weights in both towers at init; the state-dict keys of the two specs agree.
            denoiser_backbone.load_state_dict(self.context_tower.backbone.state_dict())
        self.denoiser = Denoiser(denoiser_backbone, adaln, scan_dtype=denoiser_scan_dtype(cfg))
        if denoiser_on_meta:  # the few tensors Megatron allocates on an explicit device
            self.denoiser.to("meta")
        self._check_towers_agree()
        self._freeze_context_tower()

    @classmethod
    def build(
        cls,
        cfg: BackboneConfig,
        parallel=None,
        *,
        params_dtype=torch.float32,
        recompute: Recompute = Recompute.NONE,
        **kw,
    ):
        config = transformer_config(cfg, parallel, params_dtype=params_dtype, recompute=recompute)
        return cls(cfg, config, **kw)

    # --- construction -------------------------------------------------------------------------

    def _check_towers_agree(self) -> None:
        ctx, den = self.context_tower.backbone, self.denoiser.backbone
        checks = {
            "vocab_size": (ctx.vocab_size, den.vocab_size),
            "hidden_size": (ctx.config.hidden_size, den.config.hidden_size),
            "tensor_parallel": (
                ctx.config.tensor_model_parallel_size,
                den.config.tensor_model_parallel_size,
            ),
            "pattern": (ctx.decoder.layer_type_list, den.decoder.layer_type_list),
        }
        for name, (a, b) in checks.items():
            if a != b:
                raise ConfigError(f"context and denoiser towers disagree on {name}: {a} vs {b}")

    def _freeze_context_tower(self) -> None:
        for p in self.context_tower.parameters():
            p.requires_grad_(False)
        for module in self.context_tower.modules():
            if hasattr(module, "frozen_expert_bias"):
                module.frozen_expert_bias = True  # Megatron skips its expert-bias update
        self.context_tower.eval()

    def train(self, mode: bool = True) -> TwoTowerModel:
        super().train(mode)
        self.context_tower.eval()  # frozen: never in training mode
        return self

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """What the optimizer and DDP get: the denoiser (+ adaLN), nothing of the context tower."""
        return [p for p in self.denoiser.parameters() if p.requires_grad]

    def load_backbone_state(self, state_dict: dict) -> None:
        """Initialise both towers from one backbone state dict (e.g. a stage-1 checkpoint)."""
        for tower in (self.context_tower.backbone, self.denoiser.backbone):
            tower.load_state_dict(state_dict)

    @property
    def backbone(self) -> HybridModel:
        """The context tower's backbone — the frozen reference weights."""
        return self.context_tower.backbone

    # --- training -----------------------------------------------------------------------------

    def forward(
        self,
        clean_tokens: torch.Tensor,
        noisy_tokens: torch.Tensor,
        t_block: torch.Tensor,
        block_size: int,
        *,
        causal_in_block: bool = False,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Vectorised training forward → denoiser logits (b, L, V/TP) for every position.

        Args:
            clean_tokens, noisy_tokens: (b, L) with L a multiple of ``block_size``.
            t_block: (b, L / S) time of each block (its realised masked fraction).
            positions: (b, L) bool; if given, the final norm and LM head run only there and
                the logits are (count, V/TP) in (batch, position) order (the loss positions).
        """
        batch, length = clean_tokens.shape
        # Checked where the value enters (curriculum, sampler configs); a mismatch here is a bug.
        assert length % block_size == 0, f"block_size={block_size} does not divide L={length}"
        blocks = length // block_size
        with torch.no_grad():
            context = self.context_tower(
                clean_tokens,
                state_stride=block_size,
                logits="none",
                boundary_dtype=self.config.params_dtype,
            )
        conditioning = BlockwiseConditioning(context, block_size, blocks)
        t_tokens = t_block.repeat_interleave(block_size, dim=1)  # (b, L)
        return self.denoiser(
            noisy_tokens,
            t_tokens,
            conditioning,
            causal_in_block=causal_in_block,
            positions=positions,
        )

    # --- incremental (samplers; the DecodingModel interface of decoding/cache.py) ------------
    # Logits come back over the full vocabulary: the samplers are torch-only (the HF export
    # reuses them), so the tensor-parallel gather happens here.

    def _check_inference(self) -> None:
        if self.config.sequence_parallel:
            raise ConfigError("sampling needs parallelism.sequence_parallel=false")

    def place_towers(
        self, context_device: torch.device | str, denoiser_device: torch.device | str
    ) -> TwoTowerModel:
        """Put the context tower on ``context_device`` and the denoiser (with adaLN) on
        ``denoiser_device`` for sampling — e.g. ``("cuda:0", "cuda:1")`` for the 30B model, as
        the model card's ``place_towers_on_devices``. Returns the model."""
        if self.config.tensor_model_parallel_size > 1:
            raise ConfigError(
                "place_towers needs parallelism.tensor_parallel=1 (a tensor-parallel model "
                "lives on its ranks' devices)"
            )
        self.context_tower.to(torch.device(context_device))
        self.denoiser.to(torch.device(denoiser_device))
        return self

    place_towers_on_devices = place_towers  # the model card's (and the HF export's) name

    @property
    def denoiser_shift(self) -> bool:
        """Whether the denoiser's output at position i scores the token at i + 1
        (``model.denoiser_shift``; the samplers read it through ``unmasking.block_logits``)."""
        return self.cfg.denoiser_shift

    @property
    def context_device(self) -> torch.device:
        return self.context_tower.backbone.embedding.word_embeddings.weight.device

    @property
    def denoiser_device(self) -> torch.device:
        return self.denoiser.backbone.embedding.word_embeddings.weight.device

    @staticmethod
    def _full_vocab(out: ContextOutput) -> ContextOutput:
        if out.logits is not None:
            out.logits = _gather_vocab(out.logits)
        return out

    @torch.no_grad()
    def prefill(
        self, tokens: torch.Tensor, valid: torch.Tensor | None = None, logits: str = "last"
    ) -> ContextOutput:
        """Context caches for (left-padded) prompts (b, P); ``valid`` (b, P) marks real tokens."""
        self._check_inference()
        with distributed.on_device(self.context_device):
            return self._full_vocab(self.context_tower(tokens, valid=valid, logits=logits))

    @torch.no_grad()
    def advance(
        self,
        cache: ContextCache,
        tokens: torch.Tensor,
        logits: str = "last",
        position_states: bool = False,
    ) -> ContextOutput:
        """Extend the context caches over tokens (b, s); with ``position_states`` also the
        Mamba states after each of them (speculative verification rolls back to one)."""
        self._check_inference()
        with distributed.on_device(self.context_device):
            out = self.context_tower(
                tokens, cache=cache, logits=logits, position_states=position_states
            )
            return self._full_vocab(out)

    @torch.no_grad()
    def denoise_block(
        self,
        cache: ContextCache,
        block_tokens: torch.Tensor,
        t: torch.Tensor | None,
        *,
        causal_in_block: bool = False,
    ) -> torch.Tensor:
        """Denoiser logits (b, S, V) for the block right after the cache, at time t (b,);
        ``t=None`` runs the denoiser unmodulated (the released mock-AR decoding)."""
        self._check_inference()
        t_tokens = None if t is None else t.reshape(-1, 1).expand_as(block_tokens).float()
        with distributed.on_device(self.denoiser_device):
            logits = self.denoiser(
                block_tokens, t_tokens, CacheConditioning(cache), causal_in_block=causal_in_block
            )
            return _gather_vocab(logits)
