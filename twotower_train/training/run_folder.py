"""One run, one folder: where a run goes and what it resumes, decided before anything is written.

A run folder (``output_dir``) holds the run's resolved recipe (``recipe.yaml``), console log,
``metrics.jsonl``, wandb run, report and (by default) its ``checkpoints/``. Every checkpoint
carries the recipe it was trained with; :func:`plan_run` compares it with the new recipe:

* **must match to resume** (:func:`identity`): ``model.*`` (after the preset is expanded),
  ``objective.*`` except ``backbone_checkpoint`` (the frozen backbone is verified by its SHA-256
  reference instead), the curriculum phases trained so far (name, block size, steps / tokens,
  lr, blend dataset names and weights; later phases may be added or edited), ``data.seq_length``
  / ``split`` / ``seed``, ``training.global_batch_size`` / ``seed`` and the optimizer's
  ``weight_decay``, betas, ``eps``, ``clip_grad`` and ``precision``. A difference stops the run
  with one line naming the keys and the two ways out.
* **may change on resume** (the rest, listed in the "resumed" line): ``run_name``,
  ``output_dir``, ``parallelism.*``, data paths, ``training.max_steps`` / ``micro_batch_size`` /
  ``log_interval`` / ``eval_interval`` / ``eval_iters`` / ``grad_sync``,
  ``optimizer.use_distributed_optimizer``, ``checkpoint.*``, ``logging.*``.

A fresh run never reuses a folder that already holds a run (metrics or checkpoints): with
``checkpoint.resume=false``, or when there is no checkpoint to resume, it goes to the first free
sibling ``<output_dir>-2``, ``-3``, ... and says so. Nothing is ever deleted or overwritten.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twotower_train.atomic_write import write_text
from twotower_train.training import integrity
from twotower_train.training.checkpoint import read_common_state
from twotower_train.training.checkpoint_layout import (
    LATEST,
    META,
    CheckpointError,
    describe_incomplete,
    find_latest,
    resolve_checkpoint_dir,
)

__all__ = ["RunPlan", "agreed_plan", "identity", "plan_run", "recipe_changes", "write_recipe"]

_MUST_MATCH = {
    "data": ("seq_length", "split", "seed"),
    "training": ("global_batch_size", "seed"),
    "optimizer": ("weight_decay", "adam_beta1", "adam_beta2", "adam_eps", "clip_grad", "precision"),
}
_NOT_COMPARED_OBJECTIVE = ("backbone_checkpoint",)  # verified by its frozen reference
_SHOWN = 5  # differing keys named in the error line


@dataclass
class RunPlan:
    """Where this run writes and what it resumes from (the same on every rank)."""

    output_dir: str
    checkpoint_dir: str | None
    resume_from: str | None = None
    notes: list[str] = field(default_factory=list)
    """Lines for the console: a redirect to a new folder, the recipe changes of a resume."""


def _flat(node: Any, prefix: str) -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(_flat(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(node, list | tuple):
        out = {}
        for i, value in enumerate(node):
            out.update(_flat(value, f"{prefix}.{i}"))
        return out
    return {prefix: node}


def _model(values: Any) -> dict[str, Any]:
    """The model section with its preset expanded (``model=small`` and the same fields spelled
    out compare equal); the raw section when it does not expand."""
    from twotower_train.model.config import preset

    try:
        values = dict(values)
        return dataclasses.asdict(preset(str(values.pop("preset")), **values))
    except Exception:  # a recipe from an older version: compare what it says
        return dict(values or {})


def _blend(entries: Any) -> list[tuple[str, Any]]:
    """Dataset names and weights: the data may move between machines, the blend may not."""
    pairs = []
    for entry in entries or []:
        prefix, weight = (entry["prefix"], entry["weight"]) if isinstance(entry, dict) else entry
        pairs.append((Path(str(prefix)).name, weight))
    return pairs


def identity(recipe: dict[str, Any], trained_phases: int) -> dict[str, Any]:
    """The flattened keys of ``recipe`` that must match for a resume (module docstring)."""
    keys = _flat({"model": _model(recipe.get("model", {}))}, "")
    objective = {
        k: v for k, v in (recipe.get("objective") or {}).items() if k not in _NOT_COMPARED_OBJECTIVE
    }
    keys.update(_flat({"objective": objective}, ""))
    phases = (recipe.get("curriculum") or {}).get("phases") or []
    for i, phase in enumerate(phases[:trained_phases]):
        phase = {**phase, "blend": _blend(phase.get("blend"))}
        keys.update(_flat(phase, f"curriculum.phases.{i}"))
    for section, names in _MUST_MATCH.items():
        values = recipe.get(section) or {}
        keys.update({f"{section}.{name}": values.get(name) for name in names})
    return keys


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    missing = "(unset)"
    keys = list(new) + [key for key in old if key not in new]  # model first, as identity() lists
    return [
        f"{key} (checkpoint {old.get(key, missing)!r}, now {new.get(key, missing)!r})"
        for key in keys
        if old.get(key, missing) != new.get(key, missing)
    ]


def recipe_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The keys that differ between two recipes, as ``key (a → b)`` (for the "resumed" line)."""
    flat_old, flat_new = _flat(old, ""), _flat(new, "")
    missing = "(unset)"
    return [
        f"{key} ({flat_old.get(key, missing)} → {flat_new.get(key, missing)})"
        for key in sorted(flat_old.keys() | flat_new.keys())
        if flat_old.get(key, missing) != flat_new.get(key, missing)
    ]


def _check_recipe(path: Path, new: dict[str, Any], *, what: str, fix: str) -> list[str]:
    """Raise if the checkpoint's recipe differs in a must-match key; else the other changes."""
    common = read_common_state(path)
    old = common.get("config") or {}
    trained = common.get("train_state", {}).get("scheduler_phase")
    phases = 0 if trained is None else trained + 1
    differ = _differences(identity(old, phases), identity(new, phases))
    if differ:
        more = f" (+{len(differ) - _SHOWN} more)" if len(differ) > _SHOWN else ""
        if (
            (old.get("objective") or {}).get("name")
            == "ar"
            != (new.get("objective") or {}).get("name")
        ):
            fix += (
                f" (A stage-1 checkpoint starts stage 2 as objective.backbone_checkpoint={path}.)"
            )
        raise CheckpointError(
            f"{what} {path} was trained with a different recipe: "
            f"{'; '.join(differ[:_SHOWN])}{more}. {fix}"
        )
    return recipe_changes(old, new)


def _complete(path_text: str, key: str) -> Path:
    path = Path(path_text)
    if not path.exists():
        raise CheckpointError(
            f"{key}={path_text} does not exist; point it at a checkpoint folder "
            "(.../checkpoints/iter_XXXXXXX) or a checkpoint root with a `latest` file"
        )
    resolved = resolve_checkpoint_dir(path)
    if resolved is None:
        raise CheckpointError(f"{key}={path_text}: {describe_incomplete(path)}")
    return resolved


def _holds_run(output_dir: Path, checkpoint_dir: Path | None) -> bool:
    metrics = output_dir / "metrics.jsonl"
    if metrics.is_file() and metrics.stat().st_size > 0:
        return True
    return checkpoint_dir is not None and resolve_checkpoint_dir(checkpoint_dir) is not None


def _fresh_sibling(output_dir: Path) -> Path:
    n = 2
    while Path(f"{output_dir}-{n}").exists():
        n += 1
    return Path(f"{output_dir}-{n}")


def plan_run(output_dir: str, checkpoint: Any, recipe: dict[str, Any]) -> RunPlan:
    """Decide the run folder and the checkpoint to resume (reads only; see the module docstring).

    ``checkpoint`` is the recipe's :class:`~twotower_train.training.config.CheckpointConfig`.
    Raises :class:`CheckpointError` with one line naming the problem and the fix."""
    out = Path(output_dir)
    ckpt_dir = Path(checkpoint.dir) if checkpoint.dir else None
    new_run = (
        f"For a new run pass run_name=NAME (or output_dir=DIR), or checkpoint.resume=false for a "
        f"fresh run in a new folder next to {out} (nothing is deleted)."
    )
    if checkpoint.load_from:
        source = _complete(checkpoint.load_from, "checkpoint.load_from")
        changes = _check_recipe(
            source,
            recipe,
            what="checkpoint.load_from:",
            fix="Use the recipe it was trained with (recipe.yaml in its run folder), or drop "
            "checkpoint.load_from for a new run.",
        )
        return RunPlan(str(out), checkpoint.dir, str(source), _changes_note(source, changes))
    if ckpt_dir is not None and checkpoint.resume:
        latest, notes = _latest_intact(ckpt_dir, getattr(checkpoint, "fallback", False))
        if latest is None and any((p / "meta.json").is_file() for p in _iter_dirs(ckpt_dir)):
            raise CheckpointError(
                f"{ckpt_dir} holds checkpoints but no `latest` file; pick one with "
                f"checkpoint.load_from={ckpt_dir}/iter_XXXXXXX"
            )
        if latest is not None:
            changes = _check_recipe(latest, recipe, what="resuming:", fix=new_run)
            notes += _changes_note(latest, changes)
            return RunPlan(str(out), checkpoint.dir, str(latest), notes)
    if not _holds_run(out, ckpt_dir):
        return RunPlan(str(out), checkpoint.dir)
    fresh = _fresh_sibling(out)
    new_ckpt = checkpoint.dir
    if ckpt_dir is not None:
        try:
            new_ckpt = str(fresh / ckpt_dir.resolve().relative_to(out.resolve()))
        except ValueError:  # checkpoints outside the run folder
            if resolve_checkpoint_dir(ckpt_dir) is not None:
                raise CheckpointError(
                    f"checkpoint.dir={ckpt_dir} already holds a run and lies outside "
                    f"output_dir={out}; set checkpoint.dir to a new folder for a fresh run"
                ) from None
    why = "checkpoint.resume=false" if checkpoint.resume is False else "no checkpoint to resume"
    return RunPlan(
        str(fresh),
        new_ckpt,
        None,
        [
            f"{why}: {out} already holds a run, so this fresh run goes to {fresh} (nothing is deleted)"
        ],
    )


def _latest_intact(ckpt_dir: Path, fallback: bool) -> tuple[Path | None, list[str]]:
    """The checkpoint to resume from ``ckpt_dir`` (None: nothing to resume) and a note.

    ``latest`` naming an incomplete or damaged checkpoint stops the run with one line naming the
    newest intact one — or, with ``checkpoint.fallback=true``, resumes from that one."""
    pointer = ckpt_dir / LATEST
    if not pointer.is_file():
        return find_latest(ckpt_dir), []
    named = ckpt_dir / pointer.read_text().strip()
    if not (named / META).is_file():
        problem = f"{pointer} names {named.name}, which is not a complete checkpoint"
    else:
        damaged = integrity.damage(named)
        if damaged is None:
            return named, []
        problem = f"checkpoint {named} is damaged: {damaged}"
    previous = integrity.newest_intact(ckpt_dir, before=named)
    if previous is None:
        raise CheckpointError(
            f"{problem}; no intact checkpoint is left in {ckpt_dir}; move the folder away to "
            "start a new run there"
        )
    if not fallback:
        raise CheckpointError(
            f"{problem}; the newest intact one is {previous.name}: resume from it with "
            f"checkpoint.fallback=true (or checkpoint.load_from={previous})"
        )
    return previous, [
        f"{problem}; resuming from the newest intact checkpoint {previous} "
        "(checkpoint.fallback=true)"
    ]


def _iter_dirs(path: Path) -> list[Path]:
    return [p for p in path.iterdir() if p.name.startswith("iter_")] if path.is_dir() else []


def _changes_note(path: Path, changes: list[str]) -> list[str]:
    if not changes:
        return []
    return [f"recipe changes since {path.name}: {'; '.join(changes)}"]


def write_recipe(run_dir: Path, recipe: dict[str, Any]) -> Path:
    """``<run>/recipe.yaml``: the resolved recipe of this start (atomic replace)."""
    from omegaconf import OmegaConf

    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "recipe.yaml"
    return write_text(path, OmegaConf.to_yaml(OmegaConf.create(recipe)))


def agreed_plan(output_dir: str, checkpoint: Any, recipe: dict[str, Any]) -> RunPlan:
    """:func:`plan_run` on rank 0, the same plan (or the same error) on every rank — ranks that
    looked at the folder at different moments could otherwise pick different fresh siblings."""
    import torch.distributed as dist

    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return plan_run(output_dir, checkpoint, recipe)
    box: list[Any] = [None]
    if dist.get_rank() == 0:
        try:
            box = [plan_run(output_dir, checkpoint, recipe)]
        except CheckpointError as error:
            box = [str(error)]
    dist.broadcast_object_list(box, src=0)
    if isinstance(box[0], str):
        raise CheckpointError(box[0])
    return box[0]
