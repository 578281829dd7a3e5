"""The training curriculum as data, and its per-phase WSD learning-rate schedule (docs/diffusion.md §4).

A recipe lists phases — e.g. the released model's phase-1 S=32 → phase-2 S=32 →
phase-2 S=16 — each with a block size, a data blend, a length (steps or tokens) and a
learning-rate schedule. :class:`Curriculum` answers "what applies at global step k"
(:meth:`Curriculum.phase_at`); the trainer only asks it, so phase changes survive a resume
(the answer depends only on k).

Steps are 0-based optimizer steps: step ``k`` is the ``(k+1)``-th update. A phase given in
tokens lasts ``ceil(tokens / global_batch_tokens)`` steps (at least the requested tokens).

Learning rate: at every phase start the trainer calls :func:`build_phase_scheduler`, which
returns Megatron-Core's own ``OptimizerParamScheduler`` with ``lr_decay_style="WSD"`` reset for
the phase: linear warmup ``init → peak`` over ``warmup_steps``, stable at ``peak``, then a
``decay_style`` anneal to ``min`` over the last ``decay_steps``. It is built with
``lr_decay_steps = phase_steps - 1`` because Megatron applies the lr for ``num_steps = k`` to
step ``k`` (it calls ``scheduler.step(1)`` after each update), so the phase's last step trains
at exactly ``min``.

Plain ``torch.optim.AdamW`` works with the scheduler (it reads param-group keys with defaults),
but two things need :func:`prepare_param_groups`: Megatron's optimizer stores ``max_lr`` /
``min_lr`` in every param group and those override the scheduler's values (so a new phase's peak
must be written there), and the scheduler rewrites ``weight_decay`` of every group each step
from ``start_wd``/``end_wd`` × ``wd_mult`` (so each group's configured decay is pinned there,
keeping no-decay groups at 0).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

from twotower_train.training.validation import positive_int, reject_unknown

__all__ = [
    "ActivePhase",
    "Curriculum",
    "LRScheduleConfig",
    "PhaseConfig",
    "WSDDecayStyle",
    "build_phase_scheduler",
    "prepare_param_groups",
    "resolve_decay_steps",
]

DEFAULT_DECAY_FRACTION = 0.1


class WSDDecayStyle(enum.Enum):
    """Shape of the WSD anneal (Megatron's ``lr_wsd_decay_style`` values)."""

    LINEAR = "linear"
    COSINE = "cosine"
    EXPONENTIAL = "exponential"
    MINUS_SQRT = "minus_sqrt"


@dataclass(frozen=True)
class LRScheduleConfig:
    """Warmup-stable-decay schedule of one phase (reset at the phase start)."""

    peak: float = 1e-4  # lr of the stable part
    min: float = 1e-6  # lr of the phase's last step
    warmup_steps: int = 0  # linear warmup init → peak over these steps (0 = start at peak)
    decay_fraction: float | None = None  # anneal over this fraction of the phase's steps...
    decay_steps: int | None = None  # ...or over this many steps; neither set = 0.1 fraction
    decay_style: WSDDecayStyle = WSDDecayStyle.LINEAR  # anneal shape
    init: float = 0.0  # lr at step 0 when warmup_steps > 0 (Megatron's init_lr)


@dataclass(frozen=True)
class PhaseConfig:
    """One curriculum phase. Exactly one of ``steps`` / ``tokens`` is set."""

    name: str  # shown in logs and checkpoints
    block_size: int  # diffusion block size S; must divide seq_length
    blend: list[tuple[str, float]]  # (indexed-dataset prefix, weight > 0) pairs
    steps: int | None = None  # phase length in optimizer steps...
    tokens: int | None = None  # ...or in tokens (ceil(tokens / global_batch_tokens) steps)
    lr: LRScheduleConfig = field(default_factory=LRScheduleConfig)


@dataclass(frozen=True)
class ActivePhase:
    """What applies at a global step; ``phase_end_step`` is exclusive."""

    index: int
    phase: PhaseConfig
    step_in_phase: int
    phase_start_step: int
    phase_end_step: int

    @property
    def num_steps(self) -> int:
        """Length of the phase in steps."""
        return self.phase_end_step - self.phase_start_step


def resolve_decay_steps(lr: LRScheduleConfig, phase_steps: int) -> int:
    """Number of anneal steps of a phase of ``phase_steps`` steps (at least 1)."""
    if lr.decay_steps is not None:
        return lr.decay_steps
    fraction = DEFAULT_DECAY_FRACTION if lr.decay_fraction is None else lr.decay_fraction
    return max(1, round(fraction * phase_steps))


def _validate_lr(lr: LRScheduleConfig, phase_steps: int, key: str) -> None:
    if not isinstance(lr.decay_style, WSDDecayStyle):
        raise ValueError(f"{key}.decay_style={lr.decay_style!r} must be a WSDDecayStyle")
    if not 0.0 <= lr.min <= lr.peak:
        raise ValueError(f"{key}: need 0 <= min ({lr.min}) <= peak ({lr.peak})")
    if not 0.0 <= lr.init <= lr.peak:
        raise ValueError(f"{key}.init={lr.init} must be in [0, peak={lr.peak}]")
    if isinstance(lr.warmup_steps, bool) or not isinstance(lr.warmup_steps, int):
        raise ValueError(f"{key}.warmup_steps={lr.warmup_steps!r} must be an integer")
    if lr.warmup_steps < 0:
        raise ValueError(f"{key}.warmup_steps={lr.warmup_steps} must be >= 0")
    if lr.decay_fraction is not None and lr.decay_steps is not None:
        raise ValueError(f"{key}: set at most one of decay_fraction / decay_steps")
    if lr.decay_fraction is not None and not 0.0 < lr.decay_fraction <= 1.0:
        raise ValueError(f"{key}.decay_fraction={lr.decay_fraction} must be in (0, 1]")
    if lr.decay_steps is not None:
        positive_int(lr.decay_steps, f"{key}.decay_steps")
    if phase_steps < 2:
        raise ValueError(f"{key}: a phase needs at least 2 steps for a WSD schedule")
    decay = resolve_decay_steps(lr, phase_steps)
    if lr.warmup_steps + decay > phase_steps - 1:
        raise ValueError(
            f"{key}: warmup_steps ({lr.warmup_steps}) + decay steps ({decay}) must be at most "
            f"phase steps - 1 ({phase_steps - 1})"
        )


class Curriculum:
    """An ordered list of phases over one run; answers :meth:`phase_at`."""

    def __init__(
        self, phases: Sequence[PhaseConfig], global_batch_tokens: int, seq_length: int
    ) -> None:
        """Validate and resolve phase lengths.

        Args:
            phases: the phases in order.
            global_batch_tokens: tokens per optimizer step (global batch size × seq_length).
            seq_length: training sequence length; every block size must divide it.
        """
        self.global_batch_tokens = positive_int(global_batch_tokens, "global_batch_tokens")
        self.seq_length = positive_int(seq_length, "seq_length")
        if self.global_batch_tokens % self.seq_length != 0:
            raise ValueError(
                f"global_batch_tokens={global_batch_tokens} must be a multiple of "
                f"seq_length={seq_length}"
            )
        if not phases:
            raise ValueError("curriculum.phases must list at least one phase")
        self.phases: tuple[PhaseConfig, ...] = tuple(phases)
        steps: list[int] = []
        names: set[str] = set()
        for i, phase in enumerate(self.phases):
            key = f"curriculum.phases[{i}]"
            if not isinstance(phase.name, str) or not phase.name:
                raise ValueError(f"{key}.name must be a non-empty string")
            if phase.name in names:
                raise ValueError(f"{key}.name={phase.name!r} is used by another phase")
            names.add(phase.name)
            block = positive_int(phase.block_size, f"{key}.block_size")
            if self.seq_length % block != 0:
                raise ValueError(
                    f"{key}.block_size={block} must divide seq_length={self.seq_length} "
                    "(data.seq_length)"
                )
            self._validate_blend(phase.blend, f"{key}.blend")
            steps.append(self._resolve_steps(phase, key))
            _validate_lr(phase.lr, steps[-1], f"{key}.lr")
        self.phase_steps: tuple[int, ...] = tuple(steps)
        starts = [0]
        for n in steps[:-1]:
            starts.append(starts[-1] + n)
        self.phase_starts: tuple[int, ...] = tuple(starts)
        self.total_steps: int = starts[-1] + steps[-1]

    @property
    def boundaries(self) -> tuple[int, ...]:
        """Global steps at which a new phase begins (the first step of phases 1..n-1)."""
        return self.phase_starts[1:]

    def _resolve_steps(self, phase: PhaseConfig, key: str) -> int:
        if (phase.steps is None) == (phase.tokens is None):
            raise ValueError(f"{key}: set exactly one of steps / tokens")
        if phase.steps is not None:
            return positive_int(phase.steps, f"{key}.steps")
        tokens = positive_int(phase.tokens, f"{key}.tokens")
        return math.ceil(tokens / self.global_batch_tokens)

    @staticmethod
    def _validate_blend(blend: Sequence[tuple[str, float]], key: str) -> None:
        if not blend:
            raise ValueError(f"{key} must list at least one (prefix, weight) pair")
        for j, item in enumerate(blend):
            if isinstance(item, str) or len(item) != 2:
                raise ValueError(f"{key}[{j}]={item!r} must be a (prefix, weight) pair")
            prefix, weight = item
            if not isinstance(prefix, str) or not prefix:
                raise ValueError(f"{key}[{j}] prefix={prefix!r} must be a non-empty string")
            if isinstance(weight, bool) or not isinstance(weight, int | float) or weight <= 0:
                raise ValueError(f"{key}[{j}] weight={weight!r} must be a number > 0")

    def phase_at(self, step: int) -> ActivePhase:
        """The phase that global step ``step`` (0-based) belongs to."""
        if step < 0 or step >= self.total_steps:
            raise ValueError(f"step {step} is outside the curriculum [0, {self.total_steps})")
        index = max(i for i, start in enumerate(self.phase_starts) if start <= step)
        start = self.phase_starts[index]
        return ActivePhase(
            index=index,
            phase=self.phases[index],
            step_in_phase=step - start,
            phase_start_step=start,
            phase_end_step=start + self.phase_steps[index],
        )

    @classmethod
    def from_dict(
        cls, cfg: Mapping[str, Any] | Sequence[Any], *, global_batch_tokens: int, seq_length: int
    ) -> Curriculum:
        """Build from plain data or OmegaConf: ``{"phases": [...]}`` or the phase list itself.

        Each phase is a mapping with the :class:`PhaseConfig` keys; ``blend`` items are
        ``[prefix, weight]`` pairs or ``{prefix:, weight:}`` mappings; ``lr`` is a mapping with
        the :class:`LRScheduleConfig` keys (``decay_style`` by value, e.g. ``"cosine"``).
        Unknown keys raise an error naming them.
        """
        if isinstance(cfg, Mapping):
            reject_unknown(cfg, {"phases"}, "curriculum")
            if "phases" not in cfg:
                raise ValueError("curriculum.phases is missing")
            cfg = cfg["phases"]
        if isinstance(cfg, str | bytes) or not isinstance(cfg, Sequence):
            raise ValueError("curriculum.phases must be a list of phases")
        phases = [_phase_from_dict(p, f"curriculum.phases[{i}]") for i, p in enumerate(cfg)]
        return cls(phases, global_batch_tokens=global_batch_tokens, seq_length=seq_length)


def _phase_from_dict(cfg: Any, key: str) -> PhaseConfig:
    if not isinstance(cfg, Mapping):
        raise ValueError(f"{key} must be a mapping, got {type(cfg).__name__}")
    reject_unknown(cfg, {f.name for f in fields(PhaseConfig)}, key)
    for required in ("name", "block_size", "blend"):
        if required not in cfg:
            raise ValueError(f"{key}.{required} is missing")
    values = dict(cfg)
    values["blend"] = [_blend_item(b, f"{key}.blend[{j}]") for j, b in enumerate(cfg["blend"])]
    if "lr" in cfg:
        values["lr"] = _lr_from_dict(cfg["lr"], f"{key}.lr")
    return PhaseConfig(**values)


def _blend_item(item: Any, key: str) -> tuple[str, float]:
    if isinstance(item, Mapping):
        reject_unknown(item, {"prefix", "weight"}, key)
        if "prefix" not in item or "weight" not in item:
            raise ValueError(f"{key} needs both prefix and weight")
        return (item["prefix"], item["weight"])
    if isinstance(item, str | bytes) or not isinstance(item, Sequence) or len(item) != 2:
        raise ValueError(f"{key}={item!r} must be [prefix, weight] or {{prefix:, weight:}}")
    return (item[0], item[1])


def _lr_from_dict(cfg: Any, key: str) -> LRScheduleConfig:
    if not isinstance(cfg, Mapping):
        raise ValueError(f"{key} must be a mapping")
    reject_unknown(cfg, {f.name for f in fields(LRScheduleConfig)}, key)
    values = dict(cfg)
    if "decay_style" in values and not isinstance(values["decay_style"], WSDDecayStyle):
        try:
            values["decay_style"] = WSDDecayStyle(values["decay_style"])
        except ValueError:
            allowed = [s.value for s in WSDDecayStyle]
            raise ValueError(
                f"{key}.decay_style={values['decay_style']!r}; allowed: {allowed}"
            ) from None
    return LRScheduleConfig(**values)


def prepare_param_groups(optimizer: torch.optim.Optimizer, lr: LRScheduleConfig) -> None:
    """Make ``optimizer``'s param groups follow the phase schedule (module docstring).

    Sets ``max_lr``/``min_lr`` to the phase's ``peak``/``min`` on every group using the default
    schedule (``default_config`` True or absent — i.e. all plain torch groups; Megatron groups
    with their own lr overrides are left alone) and, once per group, pins
    ``start_wd = end_wd = weight_decay`` and ``wd_mult`` (default 1.0). Idempotent.
    """
    for group in optimizer.param_groups:
        if group.get("default_config", True):
            group["max_lr"] = lr.peak
            group["min_lr"] = lr.min
        if "start_wd" not in group:
            group["start_wd"] = group["end_wd"] = float(group.get("weight_decay", 0.0))
        group.setdefault("wd_mult", 1.0)


def build_phase_scheduler(
    optimizer: torch.optim.Optimizer, phase: PhaseConfig, phase_steps: int
) -> OptimizerParamScheduler:
    """A fresh WSD ``OptimizerParamScheduler`` for one phase of ``phase_steps`` steps.

    Its ``num_steps`` counts steps within the phase (0 at the phase start; the constructor
    already sets the lr of step 0). To resume mid-phase, build it for the active phase and call
    ``load_state_dict`` on the *fresh* object — Megatron's loader adds the saved ``num_steps``.
    Built strict (``use_checkpoint_opt_param_scheduler=False``): a checkpoint whose peak, min,
    warmup or length differ from the recipe fails to load instead of silently winning.
    """
    _validate_lr(phase.lr, phase_steps, f"phase {phase.name!r}.lr")
    prepare_param_groups(optimizer, phase.lr)
    lr = phase.lr
    return OptimizerParamScheduler(
        optimizer,
        init_lr=lr.init if lr.warmup_steps > 0 else lr.peak,
        max_lr=lr.peak,
        min_lr=lr.min,
        lr_warmup_steps=lr.warmup_steps,
        lr_decay_steps=phase_steps - 1,
        lr_decay_style="WSD",
        start_wd=0.0,
        end_wd=0.0,
        wd_incr_steps=phase_steps,
        wd_incr_style="constant",
        use_checkpoint_opt_param_scheduler=False,
        override_opt_param_scheduler=False,
        wsd_decay_steps=resolve_decay_steps(lr, phase_steps),
        lr_wsd_decay_style=lr.decay_style.value,
    )
