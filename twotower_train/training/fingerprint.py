"""Content fingerprint of a ``dist_checkpointing`` (torch_dist) checkpoint folder.

Stage 2 keeps the frozen context tower out of its checkpoints and records instead the
fingerprint of the stage-1 checkpoint the tower was loaded from; every resume and every load for
sampling recomputes it from the backbone folder it is given and compares: a verified reference to
the backbone.

What is hashed (SHA-256), for every model tensor chunk the folder stores (optimizer state is left
out — it never reaches the frozen tower): its key, global offset, tensor shape and dtype, its
stored length, and bytes read from the data file — the whole chunk when it is at most
:data:`WHOLE_CHUNK` bytes, else :data:`WINDOWS` windows of :data:`WINDOW` bytes spread evenly
over it. Chunk locations come from the checkpoint's own metadata (``.metadata``, read with
``torch.distributed.checkpoint.FileSystemReader``), so the fingerprint is a property of the
folder: the same at any TP/EP the reader runs at, and unchanged when the folder moves.

Guarantee: a checkpoint with other weights of the same shapes (another run, seed or step — every
weight differs) or other keys, shapes or dtypes does not match. Not guaranteed: edits confined to
a few elements of a large tensor between the windows (the price of not reading every byte).

Cost: at most 4 KiB read per chunk, on rank 0 only (broadcast to the others). A
Nemotron-3-Nano-30B-A3B stage-1 checkpoint has about 6.4k model chunks (128 experts × 2 matrices
× 23 MoE layers make 5.9k of them), so ≤ 26 MB of reads instead of the ≈ 63 GB (bf16) a full hash
of the weights would read.
"""

from __future__ import annotations

import hashlib
from contextlib import ExitStack
from pathlib import Path

import torch.distributed as dist
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.metadata import TensorStorageMetadata

from twotower_train.training.checkpoint_layout import CheckpointError

__all__ = ["WHOLE_CHUNK", "WINDOW", "WINDOWS", "checkpoint_fingerprint"]

WHOLE_CHUNK = 4096
WINDOWS = 4
WINDOW = 1024
OPTIMIZER_PREFIX = "optimizer."  # keys of the optimizer's sharded state (ours and Megatron's)


def _local_fingerprint(path: Path) -> str:
    metadata = FileSystemReader(str(path)).read_metadata()
    chunks = []
    for index, storage in metadata.storage_data.items():
        tensor = metadata.state_dict_metadata.get(index.fqn)
        if isinstance(tensor, TensorStorageMetadata) and not index.fqn.startswith(OPTIMIZER_PREFIX):
            chunks.append((index.fqn, tuple(index.offset or ()), tensor, storage))
    chunks.sort(key=lambda c: (c[0], c[1]))
    digest = hashlib.sha256()
    with ExitStack() as stack:
        files = {}
        for fqn, offset, tensor, storage in chunks:
            digest.update(
                f"{fqn}|{offset}|{tuple(tensor.size)}|{tensor.properties.dtype}|"
                f"{storage.length}\n".encode()
            )
            name = storage.relative_path
            if name not in files:
                files[name] = stack.enter_context(open(path / name, "rb"))
            digest.update(_sample(files[name], storage.offset, storage.length))
    return digest.hexdigest()


def _sample(stream, offset: int, length: int) -> bytes:
    """The chunk's bytes, or WINDOWS windows of WINDOW bytes spread evenly over it."""
    if length <= WHOLE_CHUNK:
        stream.seek(offset)
        return stream.read(length)
    step = (length - WINDOW) // (WINDOWS - 1)
    parts = []
    for k in range(WINDOWS):
        stream.seek(offset + k * step)
        parts.append(stream.read(WINDOW))
    return b"".join(parts)


def checkpoint_fingerprint(path: str | Path) -> str:
    """Fingerprint (hex SHA-256) of a complete checkpoint folder (module docstring).

    Collective when torch.distributed is initialised: rank 0 reads, every rank gets the result
    (or the same :class:`CheckpointError`).
    """
    path = Path(path)
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return _checked(path)
    result: list = [None]
    if dist.get_rank() == 0:
        try:
            result = [_checked(path)]
        except CheckpointError as error:
            result = [error]
    dist.broadcast_object_list(result, src=0)
    if isinstance(result[0], CheckpointError):
        raise CheckpointError(str(result[0]))
    return result[0]


def _checked(path: Path) -> str:
    try:
        return _local_fingerprint(path)
    except (OSError, ValueError) as error:
        raise CheckpointError(
            f"cannot fingerprint {path}: {error} (expected a torch_dist checkpoint folder)"
        ) from None
