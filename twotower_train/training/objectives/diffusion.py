"""Stage 2: the masked block-diffusion objective for the two-tower model (docs/diffusion.md).

Per micro-batch: the clean sequence is split into blocks of the active phase's size S; each
block draws t ~ U(ε, 1) (or stratified / antithetic draws) and masks each of its positions with
probability t (:func:`twotower_train.diffusion.corrupt_blocks`); the denoiser sees the noisy
blocks with each block's *realised* masked fraction as its time input (what the sampler feeds
at inference) and the context tower sees the clean sequence; the loss is the mean NLL over
masked positions (the released model's choice) or the ELBO 1/t weighting. Only the masked
positions go through the final norm, the LM head and the cross-entropy (Megatron's fused one for
bf16 logits): the other positions carry no loss, so their logits are never computed. With
``model.denoiser_shift`` the output at position i scores the token at i + 1, and a block's first
position (the frozen context tower's to predict) carries no loss.

The two-tower model starts from a stage-1 backbone checkpoint (``objective.backbone_checkpoint``)
loaded into both towers; the frozen context tower then never changes, so checkpoints store the
denoiser (+ adaLN) only and a verified reference to that backbone checkpoint: its content
fingerprint (:mod:`twotower_train.training.fingerprint`), checked on every resume and load, and
its location, used to find it again (a moved backbone folder verifies; another one does not).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, ClassVar

import torch
from megatron.core.transformer.module import MegatronModule

from twotower_train import backends
from twotower_train.diffusion import (
    LossOutput,
    LossWeighting,
    MetricSums,
    TimeSampling,
    corrupt_blocks,
    diffusion_step_sums,
    masked_diffusion_loss,
    shifted_loss_positions,
)
from twotower_train.errors import ConfigError
from twotower_train.model.config import BackboneConfig, ParallelConfig, Recompute
from twotower_train.model.two_tower import TwoTowerModel
from twotower_train.training.curriculum import ActivePhase, Curriculum
from twotower_train.training.fingerprint import checkpoint_fingerprint
from twotower_train.training.objectives.base import (
    ObjectiveBase,
    transformer_flops_per_token,
    vocab_parallel_argmax,
)

DENOISER_PREFIX = "denoiser."
RANDOM_INIT = "none"  # objective.backbone_checkpoint=none: both towers from a random init


class DiffusionObjective(ObjectiveBase):
    """Masked-diffusion training of the denoiser tower of a :class:`TwoTowerModel`."""

    name: ClassVar[str] = "diffusion"

    @dataclasses.dataclass
    class Config:
        backbone_checkpoint: str | None = None
        """Stage-1 checkpoint (a trainer checkpoint directory or one of its ``iter_*`` folders)
        whose backbone initialises both towers. Required for a fresh start; None is accepted only
        when resuming a self-contained stage-2 checkpoint (e.g. one ``twotower-convert import``
        wrote), and ``"none"`` asks for both towers from the same random init (experiments)."""
        mask_token_id: int | None = None
        """[MASK] id; None = the model config's ``mask_token_id`` (3 in the released model)."""
        eps: float = 1e-3
        """Lower end of t ~ U(eps, 1)."""
        time_sampling: str = "uniform"
        """uniform | stratified | antithetic (variance reduction across the batch's blocks)."""
        loss_weighting: str = "mean"
        """mean: mean NLL over masked positions (released model) | elbo: 1/t weighted."""
        num_t_buckets: int = 4
        """Logged NLL-by-t buckets over (0, 1]."""

        def __post_init__(self) -> None:
            _enum("objective.time_sampling", TimeSampling, self.time_sampling)
            _enum("objective.loss_weighting", LossWeighting, self.loss_weighting)
            if not 0.0 <= self.eps < 1.0:
                raise ConfigError(f"objective.eps={self.eps} must be in [0, 1)")

    def __init__(self, config: Config | None = None) -> None:
        super().__init__(config)
        self.time_sampling = TimeSampling(self.config.time_sampling)
        self.loss_weighting = LossWeighting(self.config.loss_weighting)
        self.mask_id: int | None = None
        self.shift = False  # model.denoiser_shift (the model may be DDP-wrapped in loss())
        self._frozen_reference: dict[str, Any] | None = None  # computed once per run

    @property
    def backbone(self) -> str | None:
        """The backbone checkpoint to load, or None (random init / self-contained checkpoint)."""
        value = self.config.backbone_checkpoint
        return None if value is None or str(value).lower() == RANDOM_INIT else value

    def check_start(self, *, resuming: bool) -> None:
        """A fresh stage-2 run needs its stage-1 backbone: without one both towers would start
        from a random init and train silently (explicit ``none`` allows that on purpose)."""
        if self.config.backbone_checkpoint is None and not resuming:
            raise ConfigError(
                "stage 2 starts from a stage-1 backbone and objective.backbone_checkpoint is not "
                "set; pass objective.backbone_checkpoint=DIR (a stage-1 checkpoint, e.g. "
                "runs/demo_ar/checkpoints), or objective.backbone_checkpoint=none to train both "
                "towers from a random init on purpose"
            )

    # --- model ---------------------------------------------------------------------------------

    def check_model(self, model_cfg: BackboneConfig) -> None:
        self.shift = model_cfg.denoiser_shift
        self.mask_id = (
            model_cfg.mask_token_id
            if self.config.mask_token_id is None
            else self.config.mask_token_id
        )
        if not 0 <= self.mask_id < model_cfg.vocab_size:
            raise ConfigError(
                f"objective.mask_token_id={self.mask_id} is outside the vocabulary "
                f"[0, model.vocab_size={model_cfg.vocab_size})"
            )

    def check(self, model_cfg: BackboneConfig, curriculum: Curriculum) -> None:
        self.check_model(model_cfg)
        if model_cfg.denoiser_shift:
            for index, phase in enumerate(curriculum.phases):
                if phase.block_size < 2:
                    raise ConfigError(
                        f"curriculum.phases[{index}].block_size={phase.block_size} with "
                        "model.denoiser_shift=true: a shifted denoiser needs blocks of at least 2"
                    )

    def build_model(
        self,
        model_cfg: BackboneConfig,
        parallel: ParallelConfig,
        params_dtype: torch.dtype,
        *,
        recompute: Recompute = Recompute.NONE,
        context_only: bool = False,
    ) -> MegatronModule:
        self.check_model(model_cfg)
        model = TwoTowerModel.build(
            model_cfg,
            parallel,
            params_dtype=params_dtype,
            recompute=recompute,
            denoiser_on_meta=context_only,
        )
        if self.backbone is not None:
            loaded = load_backbone_checkpoint(model, self.backbone)
            self._frozen_reference = _reference(loaded)  # of exactly the folder just loaded
        return model

    def trainable_parameters(self, model: TwoTowerModel):
        return model.trainable_parameters()

    # --- loss ----------------------------------------------------------------------------------

    def loss(
        self, model: TwoTowerModel, batch: dict, phase: ActivePhase, generator: torch.Generator
    ) -> tuple[LossOutput, MetricSums]:
        tokens = batch["tokens"]  # (b, L) clean
        block_size = phase.phase.block_size
        corruption = corrupt_blocks(
            tokens,
            block_size,
            self.mask_id,
            eps=self.config.eps,
            sampling=self.time_sampling,
            generator=generator,
        )
        masked = corruption.masked  # (b, L) bool: the only positions that carry loss
        heads = masked  # where the outputs that score them are
        if self.shift:  # the output at i scores token i + 1
            masked, heads = shifted_loss_positions(masked, block_size)
        # Final norm, LM head and cross-entropy over the loss positions only: (n, V/TP).
        logits = model(tokens, corruption.noisy, corruption.t_realised, block_size, positions=heads)
        nll = backends.vocab_parallel_cross_entropy(logits.dtype)(logits, tokens[masked])  # (n,)
        # Back to (b, L) with zeros off the mask, which the reductions below never read.
        token_nll = torch.zeros(tokens.shape, dtype=torch.float32, device=tokens.device)
        token_nll = token_nll.masked_scatter(masked, nll.float())
        predictions = torch.zeros_like(tokens).masked_scatter(masked, vocab_parallel_argmax(logits))
        # ELBO weights use the sampled noise level (the forward process's t); the denoiser's
        # input is the realised fraction.
        out = masked_diffusion_loss(
            token_nll, masked, corruption.t_sampled, weighting=self.loss_weighting
        )
        sums = diffusion_step_sums(
            token_nll,
            predictions,
            tokens,
            masked,
            corruption.t_realised,
            num_t_buckets=self.config.num_t_buckets,
        )
        return out, sums

    def summarize(self, sums: MetricSums) -> dict[str, float]:
        return sums.summary()

    def flops_per_token(self, model_cfg: BackboneConfig, seq_length: int) -> float:
        # Denoiser forward + backward (6N) plus the context tower's forward only (2N).
        return transformer_flops_per_token(model_cfg, seq_length) * 8.0 / 6.0

    # --- checkpoints: denoiser only + a verified reference to the frozen backbone --------------

    def checkpoint_state(self, model: TwoTowerModel) -> dict[str, Any]:
        if self.backbone is None:
            return model.sharded_state_dict()
        return model.denoiser.sharded_state_dict(prefix=DENOISER_PREFIX)

    def load_checkpoint_state(self, model: TwoTowerModel, state: dict[str, Any]) -> None:
        if self.backbone is None:
            model.load_state_dict(state)
            return
        denoiser = {k[len(DENOISER_PREFIX) :]: v for k, v in state.items()}
        model.denoiser.load_state_dict(denoiser)

    def frozen_reference(self, model: TwoTowerModel) -> dict[str, Any]:
        """The backbone checkpoint's content fingerprint (compared on resume and load) and where
        it is (absolute; the checkpoint adds the path relative to itself) — computed once."""
        if self.backbone is None:
            return {}
        if self._frozen_reference is None:
            self._frozen_reference = _reference(resolve_backbone_checkpoint(self.backbone))
        return self._frozen_reference


def _enum(key: str, enum_cls, value: str) -> None:
    valid = [e.value for e in enum_cls]
    if value not in valid:
        raise ConfigError(f"{key}={value!r}; choose one of {valid}")


def _reference(backbone: Path) -> dict[str, Any]:
    return {
        "fingerprint": checkpoint_fingerprint(backbone),
        "path": str(backbone.resolve()),
        "option": "objective.backbone_checkpoint",
    }


def resolve_backbone_checkpoint(path: str | Path) -> Path:
    """A trainer checkpoint root (follows its ``latest`` pointer) or an ``iter_*`` folder."""
    from twotower_train.training import checkpoint_layout

    path = Path(path)
    if not path.exists():
        where = "" if path.is_absolute() else f" (relative to the working directory {Path.cwd()})"
        raise ConfigError(
            f"objective.backbone_checkpoint={str(path)!r} does not exist{where}; run stage 1 "
            "first (twotower-train, recipe demo) or point it at a stage-1 checkpoint"
        )
    resolved = checkpoint_layout.resolve_checkpoint_dir(path)
    if resolved is None:
        raise ConfigError(
            f"objective.backbone_checkpoint={str(path)!r} holds no complete checkpoint"
        )
    return resolved


def load_backbone_checkpoint(model: TwoTowerModel, path: str | Path) -> Path:
    """Load a stage-1 checkpoint's backbone weights (any TP/EP it was saved at) into both
    towers of ``model``; returns the checkpoint folder it read."""
    from twotower_train.training import checkpoint, checkpoint_layout

    resolved = resolve_backbone_checkpoint(path)
    meta = resolved / checkpoint_layout.TRAINER_STATE_FILE
    if meta.exists():
        objective = json.loads(meta.read_text()).get("objective")
        if objective not in (None, "ar"):
            raise ConfigError(
                f"objective.backbone_checkpoint={str(path)!r} was written by objective "
                f"{objective!r}; stage 2 starts from a stage-1 (ar) checkpoint"
            )
    state = checkpoint.load_model_state(resolved, model.backbone.sharded_state_dict())
    model.load_backbone_state(state)
    return resolved
