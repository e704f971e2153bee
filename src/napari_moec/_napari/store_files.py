"""The widget's tiled stores as files: where runs write them until saved, and Save.

A tiled run from the widget writes a scratch ``.ozx`` (:func:`scratch_folder`, removed when the
process exits); Save… copies it, or unpacks it into an ``.ome.zarr`` folder (:func:`save_store`).
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
import zipfile
from pathlib import Path

from ..errors import ConfigError

__all__ = ["save_store", "scratch_folder"]

_scratch: Path | None = None


def scratch_folder() -> Path:
    """Where this process's tiled runs write their stores until saved: one temporary folder,
    removed when the process exits (the result layers read from it until then)."""
    global _scratch
    if _scratch is None:
        _scratch = Path(tempfile.mkdtemp(prefix="napari-moec-"))
        atexit.register(shutil.rmtree, _scratch, ignore_errors=True)
    return _scratch


def save_store(store: str, path: str | Path) -> Path:
    """Write the store ``store`` (a ``.ozx`` file, or the folder of a stopped run) to ``path``:
    one ``.ozx`` file, or a folder (``.ome.zarr`` appended when the name has no zarr suffix).
    Atomic: made beside the target and renamed into place; an existing target is refused.

    A finished run's store is an ``.ozx`` budgeted with its ZIP records, so both forms keep
    the target ratio (the folder is the smaller). A stopped run's folder keeps its run state
    (``moec compress`` with the same source and settings resumes it).
    """
    from ..tiled.store import pack_ozx

    source, path = Path(store), Path(path)
    if path.suffix.lower() not in (".ozx", ".zarr"):
        path = path.with_name(path.name + ".ome.zarr")
    if path.exists():
        raise ConfigError(f"{path} exists; choose another name")
    partial = path.with_name(f".{path.name}.partial")
    if partial.is_dir():
        shutil.rmtree(partial)
    else:
        partial.unlink(missing_ok=True)
    if path.suffix.lower() == ".ozx":
        if source.is_dir():
            pack_ozx(source, path)  # writes atomically itself
            return path
        shutil.copyfile(source, partial)
    elif source.is_dir():
        shutil.copytree(source, partial)
    else:
        with zipfile.ZipFile(source) as zf:
            zf.extractall(partial)
    partial.rename(path)
    return path
