"""Reading input volumes and writing decoded ones (TIFF, .npy) for the CLI.

TIFF spacing comes from ImageJ metadata (``spacing`` = Z step, X/Y resolution tags, ``unit``),
the convention of tifffile and Fiji. Writes are atomic, like ``Compressed.save``.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile

from .errors import ConfigError
from .volumes import check_axes

__all__ = ["Volume", "read_volume", "write_volume"]


@dataclass(frozen=True)
class Volume:
    array: np.ndarray
    axes: str | None = None
    spacing: tuple[float, ...] | None = None
    unit: str | None = None


def read_volume(path: str | os.PathLike) -> Volume:
    """Read a TIFF or .npy volume, or raise ConfigError naming the problem."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"input file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            return Volume(np.load(path, allow_pickle=False))
        except ValueError as exc:
            raise ConfigError(f"{path.name}: not a readable .npy array ({exc})") from None
    if suffix not in (".tif", ".tiff"):
        raise ConfigError(f"{path.name}: unsupported input type {suffix!r} (use .tif or .npy)")
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            array = series.asarray()
            axes = series.axes
            spacing, unit = _tiff_spacing(tif, array.ndim, axes)
    except (tifffile.TiffFileError, ValueError, OSError) as exc:
        raise ConfigError(f"{path.name}: not a readable TIFF ({exc})") from None
    if "S" in axes:
        raise ConfigError(f"{path.name}: RGB/multi-sample TIFF (axes {axes}); expected a volume")
    axes = axes.replace("Q", "Z").replace("I", "Z")
    try:
        axes = check_axes(axes, array.ndim)
    except ConfigError:
        axes = None  # tifffile's letters do not name a volume's axes: use the default
    return Volume(array, axes, spacing, unit)


def _tiff_spacing(tif: tifffile.TiffFile, ndim: int, axes: str):
    meta = tif.imagej_metadata or {}
    page = tif.pages[0]
    try:
        yres = page.tags["YResolution"].value
        xres = page.tags["XResolution"].value
        sy, sx = yres[1] / yres[0], xres[1] / xres[0]
    except (KeyError, ZeroDivisionError, TypeError):
        return None, None
    sz = float(meta.get("spacing", 1.0))
    if not meta and (sy, sx) == (1.0, 1.0):
        return None, None
    spacing = [1.0] * ndim
    spacing[-1], spacing[-2] = float(sx), float(sy)
    if "Z" in axes:
        spacing[axes.index("Z")] = sz
    unit = meta.get("unit")
    return tuple(spacing), (unit if isinstance(unit, str) and unit else None)


def write_volume(path: str | os.PathLike, volume: Volume) -> Path:
    """Write ``.tif`` (ImageJ hyperstack where ImageJ supports the dtype) or ``.npy``,
    atomically (temporary file + rename)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".tif", ".tiff", ".npy"):
        raise ConfigError(f"{path.name}: unsupported output type {suffix!r} (use .tif or .npy)")
    if not path.parent.is_dir():
        raise ConfigError(f"output folder does not exist: {path.parent}")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        if suffix == ".npy":
            np.save(tmp, volume.array)
        else:
            _write_tiff(tmp, volume)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _write_tiff(path: str, volume: Volume) -> None:
    array = volume.array
    kwargs: dict = {}
    imagej = array.dtype.name in ("uint8", "uint16", "float32") and volume.axes is not None
    if imagej:
        metadata: dict = {"axes": volume.axes}
        if volume.spacing:
            kwargs["resolution"] = (1.0 / volume.spacing[-1], 1.0 / volume.spacing[-2])
            if "Z" in volume.axes:
                metadata["spacing"] = volume.spacing[volume.axes.index("Z")]
        if volume.unit:
            metadata["unit"] = volume.unit
        kwargs["metadata"] = metadata
    tifffile.imwrite(path, array, imagej=imagej, **kwargs)
