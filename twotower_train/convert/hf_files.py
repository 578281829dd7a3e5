"""Files of a Hugging Face model folder: safetensors shards + index, read and written with tqdm
progress, and output folders that appear atomically.

Progress bars go to stderr on a terminal only (``tqdm(disable=None)``), so a command whose
stderr is captured prints nothing but its one error line.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from twotower_train.errors import UserError
from twotower_train.inference.export_files import (
    SAFETENSORS_INDEX,
    SAFETENSORS_SINGLE,
    check_export_folder,
)

DEFAULT_SHARD_BYTES = 5 * 2**30


class ConversionError(UserError, ValueError):
    """A checkpoint or config cannot be converted; the message names the file, tensor or key."""


def tensor_files(path: Path) -> dict[str, str]:
    """Tensor name → the safetensors file (relative to ``path``) that holds it; the index and
    every shard it lists are checked whole first (one line naming the file otherwise)."""
    try:
        weight_map = check_export_folder(path)
    except UserError as error:
        raise ConversionError(str(error)) from None
    if weight_map is not None:
        return weight_map
    with safe_open(path / SAFETENSORS_SINGLE, framework="pt") as f:
        return {name: SAFETENSORS_SINGLE for name in f.keys()}


def listing(path: Path) -> Path:
    """The file that lists the folder's tensors (for error messages)."""
    index = path / SAFETENSORS_INDEX
    return index if index.is_file() else path / SAFETENSORS_SINGLE


def read_tensors(
    path: Path, names: Iterable[str], files: dict[str, str]
) -> dict[str, torch.Tensor]:
    """Read ``names`` (each listed in ``files``) from the shards of ``path``."""
    wanted = sorted(names, key=lambda n: (files[n], n))
    out = {}
    with tqdm(total=len(wanted), desc=f"reading {path.name}", unit="tensor", disable=None) as bar:
        for file in sorted({files[n] for n in wanted}):
            with safe_open(path / file, framework="pt") as f:
                present = set(f.keys())
                for name in (n for n in wanted if files[n] == file):
                    if name not in present:
                        raise ConversionError(f"tensor {name!r} is missing from {path / file}")
                    out[name] = f.get_tensor(name)
                    bar.update()
    return out


@dataclass(frozen=True)
class Pending:
    """A tensor to write that is made only when its shard is written: ``like`` (on the ``meta``
    device) gives its shape and dtype; ``make()`` returns the outputs of the conversion that
    produces it (called once per shard that holds one of them), ``index`` picks this one."""

    like: torch.Tensor
    make: Callable[[], list[torch.Tensor]]
    index: int = 0


def write_shards(
    tensors: Mapping[str, torch.Tensor | Pending],
    folder: Path,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
) -> None:
    """``model-0000k-of-0000n.safetensors`` shards of at most ``max_shard_bytes`` (a larger
    tensor gets a shard of its own) and ``model.safetensors.index.json``, always.

    Shard by shard: only one shard's tensors are made (:class:`Pending`), copied to the CPU
    and held at a time, so an export needs its source model plus one shard of memory."""
    plan: list[list[str]] = [[]]
    size = total = 0
    for name, tensor in tensors.items():
        like = tensor.like if isinstance(tensor, Pending) else tensor
        nbytes = like.numel() * like.element_size()
        if plan[-1] and size + nbytes > max_shard_bytes:
            plan.append([])
            size = 0
        plan[-1].append(name)
        size += nbytes
        total += nbytes
    weight_map = {}
    for k, names in enumerate(tqdm(plan, desc="writing shards", unit="shard", disable=None), 1):
        file = f"model-{k:05d}-of-{len(plan):05d}.safetensors"
        made: dict[int, list[torch.Tensor]] = {}  # this shard's conversions, by producer
        shard = {}
        for name in names:
            tensor = tensors[name]
            if isinstance(tensor, Pending):
                outputs = made.get(id(tensor.make))
                if outputs is None:
                    outputs = made[id(tensor.make)] = tensor.make()
                tensor = outputs[tensor.index]
            shard[name] = tensor.detach().to("cpu").contiguous()  # e.g. from a GPU model
        save_file(shard, folder / file, metadata={"format": "pt"})
        del shard, made  # before the next shard is made
        weight_map.update(dict.fromkeys(names, file))
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / SAFETENSORS_INDEX).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    tensor_files(folder)  # what was written reads back whole (before the folder is published)


def save_config(config, folder: Path, *, drop: tuple[str, ...] = ()) -> None:
    """``config.save_pretrained(folder)``, its ``config.json`` as NVIDIA's Nemotron-H configs
    write it: with ``hybrid_override_pattern`` (the layer pattern string their remote code
    reads), without the keys in ``drop``."""
    config.save_pretrained(folder)
    file = folder / "config.json"
    values = json.loads(file.read_text())
    values["hybrid_override_pattern"] = config.hybrid_override_pattern
    for key in drop:
        values.pop(key, None)
    file.write_text(json.dumps(values, indent=2, sort_keys=True) + "\n")


def check_output(path: Path, overwrite: bool) -> None:
    """An existing output is only ever replaced on request."""
    if path.exists() and not overwrite:
        raise ConversionError(
            f"output folder {path} already exists; choose another one or pass --overwrite "
            "(overwrite=True) to replace it"
        )


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty sibling folder ``.<name>.partial`` to fill; on success it becomes ``path``.

    A crash or error never leaves a partial folder at ``path`` (and removes the sibling). With
    ``overwrite`` an existing ``path`` is first moved aside to ``.<name>.old``, then removed; a
    crash in between leaves it there to recover. The sibling's name is fixed, so every rank of a
    distributed job can write into it.
    """
    path = Path(path)
    check_output(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)  # leftover of a crashed run
    tmp.mkdir()
    try:
        yield tmp
        publish(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def publish(tmp: Path, path: Path) -> None:
    """Rename the finished ``tmp`` to ``path``, replacing what is there."""
    old = path.with_name(f".{path.name}.old") if path.exists() else None
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
        path.rename(old)
    tmp.rename(path)
    if old is not None:
        shutil.rmtree(old)
