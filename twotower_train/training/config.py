"""The training recipe as typed dataclasses — the schema behind the Hydra files in ``recipes/``.

Hydra composes YAML groups (``model/ parallelism/ data/ curriculum/ objective/``) and
command-line overrides into one OmegaConf tree (:mod:`twotower_train.training.recipes`);
:func:`from_container` turns it into a :class:`TrainConfig`, validating each section. Every
problem raises one :class:`~twotower_train.errors.ConfigError` whose message names the key to
change, before anything is built: unknown keys, a block size that does not divide the sequence
length, special token ids outside the vocabulary, a missing tokenizer or data prefix (with the
``data_tools`` command that creates it), batch sizes that do not divide, unknown enum values.
The objective's own checks (:meth:`~twotower_train.training.objectives.Objective.check`) run
when a run is built from a recipe (:func:`twotower_train.training.recipes.check_run`).
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twotower_train.errors import ConfigError
from twotower_train.model.config import BackboneConfig, ParallelConfig, Recompute, preset
from twotower_train.training.curriculum import Curriculum
from twotower_train.training.validation import build_section, positive_int, reject_unknown


class Precision(enum.Enum):
    """Parameter / compute precision."""

    FP32 = "fp32"
    BF16 = "bf16"


class GradSync(enum.Enum):
    """How data-parallel gradients are reduced (see :mod:`twotower_train.training.grad_reduce`)."""

    AUTO = "auto"  # Megatron DDP (CUDA and CPU)
    MEGATRON_DDP = "megatron_ddp"
    ALLREDUCE = "allreduce"


class WandbMode(enum.Enum):
    ONLINE = "online"
    OFFLINE = "offline"
    DISABLED = "disabled"


@dataclass
class DataConfig:
    """Tokenizer, sequence length and the named blends that curriculum phases use."""

    root: str = ""
    """Base folder of the data (recipes build ``tokenizer`` and blend prefixes from it)."""
    tokenizer: str = ""
    """Local Hugging Face tokenizer folder."""
    seq_length: int = 256
    """Tokens per training sample."""
    blends: dict[str, list[Any]] = field(default_factory=dict)
    """Named blends, each a list of ``{prefix, weight}``; phases refer to them by interpolation."""
    split: str = "98,2,0"
    """Train/valid/test document split of every indexed dataset."""
    seed: int = 1234
    """Dataset shuffling seed; phase ``i`` uses ``seed + i``."""
    prepare_command: str = "twotower-prepare-data --help"
    """Shown when a data prefix or the tokenizer is missing: the command that creates them."""


@dataclass
class OptimizerConfig:
    """AdamW (Megatron's optimizer on CUDA, ``torch.optim.AdamW`` on CPU)."""

    weight_decay: float = 0.1
    """Decoupled weight decay on matrices; biases, norms and 1-D parameters get none."""
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_eps: float = 1e-8
    clip_grad: float = 1.0
    """Global gradient-norm clip (0 disables)."""
    precision: Precision = Precision.FP32
    """``bf16`` on GPU (fp32 master weights in Megatron's optimizer) or ``fp32``."""
    use_distributed_optimizer: bool = True
    """Megatron's distributed optimizer: optimizer state and fp32 master weights sharded over
    data-parallel ranks. The one key both the DDP config and Megatron's optimizer config are
    derived from (:func:`twotower_train.training.optimizer.megatron_configs`); in effect only
    where Megatron's optimizer runs (CUDA, ``training.grad_sync`` auto / megatron_ddp)."""
    overlap_grad_reduce: bool = False
    """Start each gradient bucket's reduction during the backward of the last micro-batch."""
    overlap_param_gather: bool = False
    """Distributed optimizer: gather updated parameters during the next forward (needs
    ``use_distributed_optimizer``)."""


@dataclass
class TrainingConfig:
    """Batching, seeds and the cadence of logging / evaluation."""

    global_batch_size: int = 8
    """Samples per optimizer step over all data-parallel ranks."""
    micro_batch_size: int = 2
    """Samples per forward pass on one rank; accumulation = global / (micro × DP)."""
    seed: int = 1234
    """Model init, Megatron RNG streams and the corruption generator."""
    max_steps: int | None = None
    """Stop (with a checkpoint) after this global step even if the curriculum goes on."""
    log_interval: int = 1
    eval_interval: int = 0
    """Evaluate every N steps on the active phase's valid split (0 = never)."""
    eval_iters: int = 1
    """Micro-batches per evaluation."""
    grad_sync: GradSync = GradSync.AUTO
    recompute: Recompute = Recompute.NONE
    """Activation recompute of the trained layers: none | selective (attention cores, MLP and
    MoE sub-layers) | full (every layer; only its input is kept). docs/memory.md."""


@dataclass
class CheckpointConfig:
    """Distributed checkpoints (``iter_XXXXXXX/`` folders plus a ``latest`` pointer)."""

    dir: str | None = None
    """Checkpoint folder; ``null`` disables saving and auto-resume."""
    save_interval: int = 0
    """Save every N steps (0 = only at the end / on preemption)."""
    keep_last: int = 2
    """Keep this many complete checkpoints (older ones are deleted after a successful save)."""
    resume: bool = True
    """Resume from ``dir/latest`` when it exists."""
    load_from: str | None = None
    """Resume from this checkpoint folder (``.../iter_XXXXXXX``) instead of ``dir/latest``."""
    fallback: bool = False
    """When ``dir/latest`` is incomplete or damaged (a file missing or truncated), resume from
    the newest intact checkpoint instead of stopping (the run says which)."""
    save_at_end: bool = True


@dataclass
class LoggingConfig:
    """Console, wandb and TensorBoard."""

    wandb_mode: WandbMode = WandbMode.OFFLINE
    """``offline`` (a local run under ``<run folder>/wandb``), ``online`` or ``disabled``.
    ``WANDB_MODE`` in the environment, when set, replaces offline / online (wandb's switch for a
    whole machine); ``disabled`` here always wins."""
    wandb_project: str = "twotower-train"
    tensorboard: bool = False
    peak_tflops: float | None = None
    """Peak dense TFLOP/s of one device for MFU; ``null`` = by device type and precision."""
    verbose: bool = False
    """Also print Megatron's INFO lines (per-bucket parameter lists, dataset index builds)."""


@dataclass
class TrainConfig:
    """A whole training run."""

    run_name: str
    output_dir: str
    """Run folder (metrics, logs, wandb, TensorBoard; default checkpoints under it)."""
    model: BackboneConfig
    parallelism: ParallelConfig
    data: DataConfig
    curriculum: Curriculum
    objective_name: str
    objective_options: dict[str, Any]
    optimizer: OptimizerConfig
    training: TrainingConfig
    checkpoint: CheckpointConfig
    logging: LoggingConfig
    raw: dict[str, Any] = field(default_factory=dict, repr=False)
    """The resolved recipe as plain data (saved in checkpoints and the run folder)."""

    @property
    def trained_block_size(self) -> int:
        """The block size S the run trains last (its final curriculum phase): what a checkpoint
        of the run decodes with by default and what its Hugging Face export records."""
        return self.curriculum.phases[-1].block_size


# --------------------------------------------------------------------------------------------
# Conversion with validation


_SECTIONS = {
    "run_name",
    "output_dir",
    "model",
    "parallelism",
    "data",
    "curriculum",
    "objective",
    "optimizer",
    "training",
    "checkpoint",
    "logging",
}


def _model(values: Any) -> BackboneConfig:
    if not isinstance(values, Mapping):
        raise ConfigError("model must be a mapping with a `preset` key")
    values = dict(values)
    name = values.pop("preset", None)
    if name is None:
        raise ConfigError("model.preset is missing (e.g. model=tiny on the command line)")
    known = {f.name for f in dataclasses.fields(BackboneConfig)}
    reject_unknown(values, known | {"preset"}, "model")
    try:
        return preset(str(name), **values)
    except TypeError as error:
        raise ConfigError(f"model: {error}") from error


def _check_batches(training: TrainingConfig, parallel: ParallelConfig) -> None:
    positive_int(training.global_batch_size, "training.global_batch_size")
    positive_int(training.micro_batch_size, "training.micro_batch_size")
    positive_int(training.log_interval, "training.log_interval")
    positive_int(training.eval_iters, "training.eval_iters")
    if training.global_batch_size % training.micro_batch_size:
        raise ConfigError(
            f"training.global_batch_size={training.global_batch_size} is not a multiple of "
            f"training.micro_batch_size={training.micro_batch_size}"
        )
    for name in (
        "tensor_parallel",
        "expert_parallel",
        "expert_tensor_parallel",
        "pipeline_parallel",
    ):
        positive_int(getattr(parallel, name), f"parallelism.{name}")
    if parallel.pipeline_parallel != 1:
        raise ConfigError(
            "parallelism.pipeline_parallel must be 1: the trainer has no pipeline schedule yet"
        )


def check_optimizer(optimizer: OptimizerConfig, training: TrainingConfig) -> None:
    """Optimizer settings that contradict each other (Megatron would assert mid-build)."""
    if optimizer.overlap_param_gather and not optimizer.use_distributed_optimizer:
        raise ConfigError(
            "optimizer.overlap_param_gather=true needs optimizer.use_distributed_optimizer=true "
            "(only the distributed optimizer gathers parameters); set one of them accordingly"
        )
    if training.grad_sync is GradSync.ALLREDUCE:
        wanted = [
            key
            for key in ("use_distributed_optimizer", "overlap_grad_reduce", "overlap_param_gather")
            if getattr(optimizer, key)
        ]
        if wanted:
            raise ConfigError(
                f"training.grad_sync=allreduce (the plain all-reduce reference, with torch AdamW) "
                f"cannot use optimizer.{wanted[0]}=true: set it to false or use "
                "training.grad_sync=auto (Megatron DDP)"
            )


def check_data_paths(data: DataConfig, curriculum: Curriculum) -> None:
    """The tokenizer folder and every phase's ``PREFIX.bin``/``PREFIX.idx`` exist."""
    hint = f"create it with: {data.prepare_command}"
    if not data.tokenizer:
        raise ConfigError("data.tokenizer is empty; set it to a tokenizer folder")
    if not Path(data.tokenizer).is_dir():
        raise ConfigError(f"data.tokenizer={data.tokenizer} does not exist; {hint}")
    for i, phase in enumerate(curriculum.phases):
        for prefix, _ in phase.blend:
            missing = [s for s in (".bin", ".idx") if not Path(prefix + s).is_file()]
            if missing:
                raise ConfigError(
                    f"curriculum.phases[{i}] ({phase.name}) blend prefix {prefix} has no "
                    f"{' / '.join(prefix + s for s in missing)}; {hint}"
                )


def from_container(values: Mapping[str, Any], *, check_data: bool = True) -> TrainConfig:
    """Validate a resolved recipe (plain dicts/lists) into a :class:`TrainConfig`.

    Raises:
        ConfigError: one message naming the offending key.
    """
    values = {k: v for k, v in values.items() if k != "hydra"}
    reject_unknown(values, _SECTIONS, "")
    for required in ("run_name", "model", "data", "curriculum", "training"):
        if required not in values:
            raise ConfigError(f"the recipe has no `{required}` section")
    model = _model(values["model"])
    parallel = build_section(ParallelConfig, values.get("parallelism"), "parallelism")
    data = build_section(DataConfig, values["data"], "data")
    training = build_section(TrainingConfig, values["training"], "training")
    optimizer = build_section(OptimizerConfig, values.get("optimizer"), "optimizer")
    checkpoint = build_section(CheckpointConfig, values.get("checkpoint"), "checkpoint")
    logging_cfg = build_section(LoggingConfig, values.get("logging"), "logging")
    positive_int(data.seq_length, "data.seq_length")
    if data.seq_length > model.max_sequence_length:
        raise ConfigError(
            f"data.seq_length={data.seq_length} exceeds model.max_sequence_length="
            f"{model.max_sequence_length}"
        )
    _check_batches(training, parallel)
    check_optimizer(optimizer, training)
    if checkpoint.keep_last < 1:
        raise ConfigError(f"checkpoint.keep_last={checkpoint.keep_last} must be at least 1")
    try:
        curriculum = Curriculum.from_dict(
            values["curriculum"],
            global_batch_tokens=training.global_batch_size * data.seq_length,
            seq_length=data.seq_length,
        )
    except ValueError as error:
        raise ConfigError(str(error)) from None
    objective = dict(values.get("objective") or {"name": "ar"})
    objective_name = str(objective.pop("name", "ar"))
    from twotower_train.model.sizes import check_parallel_layout

    check_parallel_layout(model, parallel)
    if "E" in model.pattern and parallel.tensor_parallel > 1 and not parallel.sequence_parallel:
        raise ConfigError(
            f"parallelism.sequence_parallel=false with parallelism.tensor_parallel="
            f"{parallel.tensor_parallel} and MoE layers: Megatron-Core trains MoE under tensor "
            "parallelism only with sequence parallelism; set parallelism.sequence_parallel=true"
        )
    if check_data:
        check_data_paths(data, curriculum)
    output_dir = str(values.get("output_dir") or f"runs/{values['run_name']}")
    return TrainConfig(
        run_name=str(values["run_name"]),
        output_dir=output_dir,
        model=model,
        parallelism=parallel,
        data=data,
        curriculum=curriculum,
        objective_name=objective_name,
        objective_options=objective,
        optimizer=optimizer,
        training=training,
        checkpoint=checkpoint,
        logging=logging_cfg,
        raw=dict(values),
    )
