"""The training loop — one loop for stage 1 (AR backbone) and stage 2 (two-tower denoiser).

Per global step ``k`` (0-based)::

    phase = curriculum.phase_at(k)                 # on a change: new data blend, fresh WSD
    for offset, micro_batch in this rank's slice of the global batch:
        generator.manual_seed(hash(seed, k, offset))  # all randomness of the micro-batch
        loss_sums = objective.loss(model, micro_batch, phase, generator)
        loss_sums.numerator.backward()
    reducer.finish(num_tokens)                     # DDP + finalize_model_grads, ÷ global tokens
    optimizer.step()                               # clip + AdamW (Megatron's on CUDA)
    scheduler.step(1)                              # WSD lr of step k+1
    log, evaluate every N, checkpoint every N, stop cleanly on SIGTERM / SIGUSR1 / Ctrl-C

Before building anything the run folder is settled (:mod:`~twotower_train.training.run_folder`:
resume only with a matching recipe, a fresh run never in a folder that holds one); at the end
the report goes into it (:mod:`~twotower_train.training.report`).

Everything stage-specific is the :class:`~twotower_train.training.objectives.Objective`;
everything about *when* (block size, blend, lr) is the curriculum. The trainer trains exactly
the parameters the objective names and freezes the rest, so a model with a frozen tower needs
nothing special here. The model, batches,
the generator and every tensor entering a collective live on
:func:`twotower_train.distributed.device` (the device rule).

CPU example (seconds; needs the demo data, see docs/training.md)::

    .venv/bin/twotower-train training.max_steps=5
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

from twotower_train import backends, cli, distributed
from twotower_train.diffusion import MetricSums
from twotower_train.training.batches import PhaseData, build_phase_data, micro_batches
from twotower_train.training.checkpoint import (
    TrainState,
    load_checkpoint,
    read_train_state,
    save_checkpoint,
)
from twotower_train.training.config import Precision, TrainConfig
from twotower_train.training.curriculum import (
    ActivePhase,
    Curriculum,
    build_phase_scheduler,
    prepare_param_groups,
)
from twotower_train.training.grad_reduce import GradReducer
from twotower_train.training.logging import MetricLogger, default_peak_tflops, mfu
from twotower_train.training.objectives import Objective, build_objective
from twotower_train.training.optimizer import build_reducer_and_optimizer, freeze_all_but
from twotower_train.training.preemption import PreemptionSignal
from twotower_train.training.report import read_metrics, summarize, write_report
from twotower_train.training.run_folder import agreed_plan, write_recipe
from twotower_train.training.step_loss import evaluate_loss, micro_batch_seed, reduce_step_loss

__all__ = ["RunResult", "Trainer"]

ALREADY_DONE = "already_done"
"""Outcome of a start whose checkpoint is already at (or past) the step this recipe stops at."""


@dataclass
class RunResult:
    """What :meth:`Trainer.train` reports: the outcome and where the run is."""

    outcome: str  # finished | max_steps | preempted | interrupted (Ctrl-C) | already_done
    run_dir: Path
    checkpoint_dir: Path | None


class Trainer:
    """Builds the run from a :class:`TrainConfig` and trains it; see the module docstring."""

    cfg: TrainConfig
    objective: Objective
    module: torch.nn.Module  # the model as built (checkpoints, objective calls)
    model: torch.nn.Module  # what the forward runs on (the Megatron DDP wrapper, CPU and CUDA)
    trainable: list[torch.nn.Parameter]
    reducer: GradReducer
    optimizer: Any  # TorchAdamW on CPU, MegatronAdamW on CUDA
    curriculum: Curriculum
    phase: ActivePhase | None  # the phase of the data and scheduler below
    data: PhaseData | None
    scheduler: OptimizerParamScheduler | None
    state: TrainState
    generator: torch.Generator
    logger: MetricLogger
    preemption: PreemptionSignal

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self._started = time.perf_counter()
        cli.set_library_verbosity(cfg.logging.verbose)
        if not backends.cuda_available():
            cli.quiet_cpu_notices()
        par, training = cfg.parallelism, cfg.training
        distributed.initialize(
            tensor_parallel=par.tensor_parallel,
            expert_parallel=par.expert_parallel,
            expert_tensor_parallel=par.expert_tensor_parallel,
            pipeline_parallel=par.pipeline_parallel,
            seed=training.seed,
        )
        self.dp_rank = parallel_state.get_data_parallel_rank()
        self.dp_size = parallel_state.get_data_parallel_world_size()
        self.curriculum = cfg.curriculum
        self.stop_step = self.curriculum.total_steps
        if training.max_steps is not None:
            self.stop_step = min(self.stop_step, training.max_steps)
        # Settled before anything is built or written: a bad checkpoint fails in seconds.
        self.plan = agreed_plan(cfg.output_dir, cfg.checkpoint, cfg.raw)
        self.run_dir = Path(self.plan.output_dir)
        self.checkpoint_dir = self.plan.checkpoint_dir
        # The resolved recipe as this run uses it (saved in the run folder and in checkpoints).
        self.recipe = {
            **cfg.raw,
            "output_dir": self.plan.output_dir,
            "checkpoint": {**cfg.raw.get("checkpoint", {}), "dir": self.checkpoint_dir},
        }
        self.objective = build_objective(cfg.objective_name, cfg.objective_options)
        self.objective.check_start(resuming=self.plan.resume_from is not None)
        bf16 = cfg.optimizer.precision is Precision.BF16
        self.module = distributed.to_device(
            self.objective.build_model(
                cfg.model,
                par,
                torch.bfloat16 if bf16 else torch.float32,
                recompute=training.recompute,
            )
        )
        self.trainable = freeze_all_but(
            self.module, self.objective.trainable_parameters(self.module)
        )
        self.reducer, self.optimizer = build_reducer_and_optimizer(cfg, self.module, self.trainable)
        self.model = self.reducer.model
        self.generator = torch.Generator(device=distributed.device())
        self.state = TrainState()
        self.phase = self.data = self.scheduler = None
        self._saved_scheduler: dict | None = None
        self._last_saved_step: int | None = None
        self._train_seconds, self._tokens, self._steps_run = 0.0, 0, 0
        if dist.get_rank() == 0:
            write_recipe(self.run_dir, self.recipe)
        self.logger = MetricLogger(
            cfg.logging,
            self.run_dir,
            cfg.run_name,
            self.recipe,
            rank=dist.get_rank(),
            total_steps=self.stop_step,
        )
        for note in self.plan.notes:
            self.logger.message(note)
        missing = backends.missing_gpu_extras()
        if missing:
            self.logger.message(
                f"GPU extras not installed: {', '.join(missing)} (slower fallbacks; "
                "pip install -e '.[gpu]', see docs/install.md)"
            )
        self.flops_per_token = self.objective.flops_per_token(cfg.model, cfg.data.seq_length)
        self.peak_tflops = cfg.logging.peak_tflops or default_peak_tflops(cfg.optimizer.precision)
        self._resume()
        self.preemption = PreemptionSignal()

    # ----------------------------------------------------------------------------- building

    def _resume(self) -> None:
        if self.plan.resume_from is None:
            return
        path = Path(self.plan.resume_from)
        saved_phase = read_train_state(path).scheduler_phase
        if saved_phase is not None:
            # Megatron's optimizer pairs saved and current param groups by their lr settings.
            prepare_param_groups(self.optimizer, self.curriculum.phases[saved_phase].lr)
        loaded = load_checkpoint(
            path,
            objective=self.objective,
            model=self.module,
            optimizer=self.optimizer,
            generator=self.generator,
        )
        self.state = loaded.state
        self._last_saved_step = self.state.step
        if self.state.step < self.curriculum.total_steps:
            active = self.curriculum.phase_at(self.state.step)
            if loaded.state.scheduler_phase == active.index:
                self._saved_scheduler = loaded.scheduler
        rng = "restored" if loaded.rng_restored else "re-seeded (parallel layout changed)"
        self.logger.message(f"resumed from {path} at step {self.state.step}; RNG {rng}")

    def _enter_phase(self, active: ActivePhase) -> None:
        """New blend, fresh WSD scheduler (or the checkpoint's, when resuming mid-phase)."""
        training = self.cfg.training
        self.data = build_phase_data(
            self.cfg.data,
            active,
            global_batch_size=training.global_batch_size,
            eval_samples=training.eval_iters * training.micro_batch_size * self.dp_size
            if training.eval_interval
            else 0,
        )
        self.scheduler = build_phase_scheduler(self.optimizer, active.phase, active.num_steps)
        if self._saved_scheduler is not None:
            self.scheduler.load_state_dict(self._saved_scheduler)
            self._saved_scheduler = None
        self.phase = active
        self.logger.message(
            f"phase {active.index} '{active.phase.name}': steps {active.phase_start_step}-"
            f"{active.phase_end_step - 1}, block size {active.phase.block_size}, "
            f"blend {[(Path(p).name, w) for p, w in active.phase.blend]}"
        )

    # ----------------------------------------------------------------------------- training

    def train(self) -> RunResult:
        """Run to the end of the curriculum (or ``training.max_steps``), then write the report."""
        stop = self.stop_step
        if self.state.step >= stop:
            limit = (
                "the end of the curriculum"
                if stop == self.curriculum.total_steps
                else f"training.max_steps={stop}"
            )
            self.logger.message(
                f"nothing to train: {self.plan.resume_from} is at step {self.state.step}, "
                f"{limit}. For another run pass run_name=NAME or output_dir=DIR; to train on, "
                "raise training.max_steps or add a curriculum phase"
            )
            return self._result(ALREADY_DONE)
        self.model.train()
        outcome = "finished" if stop == self.curriculum.total_steps else "max_steps"
        while self.state.step < stop:
            active = self.curriculum.phase_at(self.state.step)
            if self.phase is None or active.index != self.phase.index:
                self._enter_phase(active)
            record = self.train_step(active)
            step = record["step"]
            interval = self.cfg.training.eval_interval
            if interval and (step + 1) % interval == 0:
                record["eval/loss"] = self.evaluate(active)
            if (step + 1) % self.cfg.training.log_interval == 0 or "eval/loss" in record:
                self.logger.log(record)
            if self.preemption.requested():
                how = "Ctrl-C" if self.preemption.interrupted else "preemption signal"
                self.logger.message(f"{how}: checkpoint at step {self.state.step}")
                self.save()
                return self._finish("interrupted" if self.preemption.interrupted else "preempted")
            every = self.cfg.checkpoint.save_interval
            if every and self.state.step % every == 0:
                self.save()
        if self.cfg.checkpoint.save_at_end:
            self.save()
        return self._finish(outcome)

    def _result(self, outcome: str) -> RunResult:
        ckpt = Path(self.checkpoint_dir) if self.checkpoint_dir else None
        return RunResult(outcome, self.run_dir, ckpt)

    def _finish(self, outcome: str) -> RunResult:
        """Write the run report (rank 0) and return the result."""
        if self.logger.enabled:
            summary = summarize(
                read_metrics(self.run_dir / "metrics.jsonl"),
                outcome=outcome,
                steps_done=self.state.step,
                stop_step=self.stop_step,
                steps_this_start=self._steps_run,
                wall_seconds=time.perf_counter() - self._started,
                train_seconds=self._train_seconds,
                tokens=self._tokens,
            )
            for line in write_report(self.run_dir, summary, title=str(self.run_dir)):
                self.logger.message(line)
        return self._result(outcome)

    def train_step(self, active: ActivePhase) -> dict[str, Any]:
        """One optimizer step on the global batch; returns its metrics record."""
        training, state = self.cfg.training, self.state
        start = time.perf_counter()
        step, name = state.step, active.phase.name
        self.reducer.zero()
        self.optimizer.zero_grad()
        numerator = torch.zeros((), dtype=torch.float64, device=distributed.device())
        denominator = torch.zeros((), dtype=torch.float64, device=distributed.device())
        sums: MetricSums | None = None
        consumed = state.consumed_samples.get(name, 0)
        last = training.global_batch_size // (training.micro_batch_size * self.dp_size) - 1
        for m, (offset, batch) in enumerate(
            micro_batches(
                self.data.train,
                consumed,
                global_batch_size=training.global_batch_size,
                micro_batch_size=training.micro_batch_size,
                dp_rank=self.dp_rank,
                dp_size=self.dp_size,
            )
        ):
            self.generator.manual_seed(micro_batch_seed(training.seed, step, offset))
            out, metrics = self.objective.loss(self.model, batch, active, self.generator)
            # Gradient reduction starts only in the last micro-batch's backward.
            with self.reducer.no_sync() if m < last else contextlib.nullcontext():
                out.numerator.backward()
            numerator += out.numerator.detach().double()
            denominator += out.denominator.detach().double()
            sums = metrics if sums is None else sums + metrics
        lr = self.optimizer.param_groups[0]["lr"]
        self.reducer.finish(denominator.clone())
        _, grad_norm, _ = self.optimizer.step()
        self.scheduler.step(1)
        state.consumed_samples[name] = consumed + training.global_batch_size
        state.step += 1
        state.scheduler_phase = active.index
        loss, summary = reduce_step_loss(self.objective, numerator, denominator, sums)
        seconds = time.perf_counter() - start
        tokens = training.global_batch_size * self.cfg.data.seq_length
        self._train_seconds += seconds
        self._tokens += tokens
        self._steps_run += 1
        tokens_per_s = tokens / seconds
        utilisation = mfu(
            tokens_per_s, self.flops_per_token, self.peak_tflops, dist.get_world_size()
        )
        return {
            "step": step,
            "phase": name,
            "phase_index": active.index,
            "block_size": active.phase.block_size,
            "consumed_samples": state.consumed_samples[name],
            "loss": loss,
            "lr": lr,
            "grad_norm": float(grad_norm),
            "step_time": seconds,
            "tokens_per_s": tokens_per_s,
            **({"mfu": utilisation} if utilisation is not None else {}),  # known peak only
            **summary,
        }

    def evaluate(self, active: ActivePhase) -> float:
        """Loss on the phase's fixed valid micro-batches (same corruption seed every time)."""
        if self.data.valid is None:
            return float("nan")
        training = self.cfg.training
        return evaluate_loss(
            self.model,
            self.objective,
            self.data.valid,
            active,
            self.generator,
            seed=training.seed,
            iters=training.eval_iters,
            micro_batch_size=training.micro_batch_size,
            dp_rank=self.dp_rank,
            dp_size=self.dp_size,
        )

    # ----------------------------------------------------------------------------- outputs

    def save(self) -> Path | None:
        """Checkpoint the current state (no-op without ``checkpoint.dir``)."""
        if not self.checkpoint_dir:
            return None
        if self._last_saved_step == self.state.step:
            return None
        self.reducer.sync_params()
        path = save_checkpoint(
            self.checkpoint_dir,
            objective=self.objective,
            model=self.module,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            state=self.state,
            generator=self.generator,
            config=self.recipe,
            keep_last=self.cfg.checkpoint.keep_last,
        )
        self._last_saved_step = self.state.step
        self.logger.message(f"saved checkpoint {path}")
        return path

    def close(self) -> None:
        self.preemption.restore()
        self.logger.close()
