"""Open local Hugging Face ``datasets`` sources as one :class:`datasets.Dataset`.

Formats: ``jsonl`` (one JSON object per line; ``.json`` too), ``parquet``, ``arrow`` (files written
by ``datasets``), ``text`` (plain text; one document per line, paragraph or file) and ``saved``
(a folder written by ``Dataset.save_to_disk``). ``auto`` picks the format from the file
extension or, for a folder, from the files ``save_to_disk`` leaves in it. Nothing is downloaded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from twotower_train.data.errors import DataError

FORMATS: tuple[str, ...] = ("auto", "jsonl", "parquet", "arrow", "text", "saved")
_EXTENSIONS: dict[str, str] = {
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
    ".arrow": "arrow",
    ".txt": "text",
    ".text": "text",
    ".md": "text",
    ".rst": "text",
}
_SAVED_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")


@dataclass(frozen=True)
class SourceSpec:
    """Which local files to read and how."""

    paths: tuple[Path, ...]
    """The input files (or one saved-dataset folder)."""
    fmt: str
    """One of :data:`FORMATS` other than ``auto``."""
    text_key: str = "text"
    """Column holding the document text."""
    sample_by: str = "line"
    """For ``text`` only: one document per ``line``, ``paragraph`` or ``document`` (file)."""


def detect_format(path: Path) -> str:
    """The format of one input path, from its extension or (folders) its contents."""
    if path.is_dir():
        if any((path / marker).exists() for marker in _SAVED_MARKERS):
            return "saved"
        raise DataError(
            f"{path} is a folder but not one written by datasets' save_to_disk (no "
            f"{' / '.join(_SAVED_MARKERS)}); pass the data files themselves"
        )
    fmt = _EXTENSIONS.get(path.suffix.lower())
    if fmt is None:
        raise DataError(
            f"cannot tell the format of {path} from its extension; pass --format "
            f"({', '.join(FORMATS[1:])})"
        )
    return fmt


def resolve_sources(
    inputs: Sequence[str | Path], fmt: str = "auto", text_key: str = "text", sample_by: str = "line"
) -> SourceSpec:
    """Check that the inputs exist and agree on one format.

    Raises:
        DataError: a path is missing, the format is unknown or mixed, or ``saved`` is given more
            than one folder.
    """
    if fmt not in FORMATS:
        raise DataError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    if sample_by not in ("line", "paragraph", "document"):
        raise DataError(f"unknown text sample_by {sample_by!r}; use line, paragraph or document")
    if not inputs:
        raise DataError("no input given; pass one or more files with --input")
    paths = tuple(Path(p) for p in inputs)
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise DataError(f"input not found: {', '.join(missing)}")
    if fmt == "auto":
        found = {detect_format(p) for p in paths}
        if len(found) > 1:
            raise DataError(
                f"inputs mix formats ({', '.join(sorted(found))}); prepare each format separately"
            )
        fmt = found.pop()
    if fmt == "saved" and len(paths) != 1:
        raise DataError("the saved format takes exactly one folder written by save_to_disk")
    if fmt != "saved":
        folders = [str(p) for p in paths if p.is_dir()]
        if folders:
            raise DataError(f"expected files for format {fmt!r}, got folders: {', '.join(folders)}")
    return SourceSpec(paths=paths, fmt=fmt, text_key=text_key, sample_by=sample_by)


def _load_saved(path: Path):
    import datasets

    loaded = datasets.load_from_disk(str(path))
    if isinstance(loaded, datasets.DatasetDict):
        if "train" not in loaded:
            raise DataError(
                f"{path} holds splits {', '.join(loaded)} but no 'train'; save the split you want "
                "with Dataset.save_to_disk"
            )
        loaded = loaded["train"]
    return loaded


def load_source(spec: SourceSpec, cache_dir: str | None = None):
    """Read the inputs into one ``datasets.Dataset`` and check the text column.

    Raises:
        DataError: unreadable input, no rows, or no string column named ``spec.text_key``.
    """
    import datasets

    files = [str(p) for p in spec.paths]
    if spec.fmt != "saved" and all(p.stat().st_size == 0 for p in spec.paths):
        raise DataError(f"{', '.join(files)} is empty (0 bytes); nothing to prepare")
    try:
        if spec.fmt == "saved":
            ds = _load_saved(spec.paths[0])
        elif spec.fmt == "jsonl":
            ds = datasets.Dataset.from_json(files, cache_dir=cache_dir)
        elif spec.fmt == "parquet":
            ds = datasets.Dataset.from_parquet(files, cache_dir=cache_dir)
        elif spec.fmt == "text":
            ds = datasets.Dataset.from_text(files, cache_dir=cache_dir, sample_by=spec.sample_by)
        else:
            parts = [datasets.Dataset.from_file(f) for f in files]
            ds = parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)
    except DataError:
        raise
    except Exception as error:  # datasets raises many types for unreadable files
        raise DataError(f"cannot read {', '.join(files)} as {spec.fmt}: {error}") from error
    if len(ds) == 0:
        raise DataError(f"{', '.join(files)} contains no rows; nothing to prepare")
    if spec.text_key not in ds.column_names:
        raise DataError(
            f"text field {spec.text_key!r} not found in {', '.join(files)}; its columns are "
            f"{', '.join(ds.column_names)} - pass the right one with --text-key"
        )
    feature = ds.features[spec.text_key]
    if getattr(feature, "dtype", None) not in ("string", "large_string"):
        raise DataError(
            f"column {spec.text_key!r} in {', '.join(files)} holds {feature}, not text; pass a "
            "string column with --text-key"
        )
    return ds
