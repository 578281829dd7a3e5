"""Writing a file so that readers see the old content or the new one, never a partial file: the
content goes to a temporary sibling, which then replaces the target (``os.replace``, atomic on
one filesystem). A crash leaves at most a ``<name>.tmp-<pid>`` file next to the target."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | Path, *, keep_suffix: bool = False) -> Iterator[Path]:
    """A temporary sibling of ``path`` to write inside the block; it replaces ``path`` when the
    block ends without an exception and is removed when one is raised. ``keep_suffix`` keeps the
    target's suffix last (``plot.tmp-<pid>.png``) for writers that pick the format by suffix."""
    path = Path(path)
    tag = f".tmp-{os.getpid()}"
    name = f"{path.stem}{tag}{path.suffix}" if keep_suffix else f"{path.name}{tag}"
    tmp = path.with_name(name)
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def write_text(path: str | Path, text: str, *, durable: bool = False) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; ``durable`` also fsyncs it before the
    rename (checkpoint metadata that must survive a power loss)."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as stream:
        stream.write(text)
        if durable:
            stream.flush()
            os.fsync(stream.fileno())
    return path
