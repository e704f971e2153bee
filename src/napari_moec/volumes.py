"""What napari-moec accepts as a volume: dtypes, axes, spacing, and the checks that say so.

One place for these rules: the compressor, the file format, the readers and the napari widget
all ask here, so a volume the widget offers is one the compressor takes and the file can hold.
"""

from __future__ import annotations

import math

import numpy as np

from .errors import ConfigError

__all__ = [
    "AXIS_LETTERS",
    "SUPPORTED_DTYPES",
    "check_axes",
    "check_spacing",
    "check_volume",
    "check_volume_shape",
    "default_axes",
]

SUPPORTED_DTYPES = ("uint8", "uint16", "int16", "float32")
#: Axis letters a volume may use: time, channel and the three spatial axes.
AXIS_LETTERS = "TCZYX"


def default_axes(ndim: int) -> str:
    """ "ZYX" for 3D, "TZYX" for 4D volumes."""
    return "ZYX" if ndim == 3 else "TZYX"


def check_axes(axes: str | None, ndim: int) -> str:
    """``axes`` (or the default for ``ndim``) if it names ``ndim`` distinct letters of TCZYX.

    Raises
    ------
    ConfigError
        Naming the axes and the dimensionality they fail to fit.
    """
    if axes is None:
        return default_axes(ndim)
    if (
        not isinstance(axes, str)
        or len(axes) != ndim
        or len(set(axes)) != ndim
        or not set(axes) <= set(AXIS_LETTERS)
    ):
        raise ConfigError(f"axes {axes!r} do not fit a {ndim}D volume (letters {AXIS_LETTERS})")
    return axes


def check_spacing(spacing, ndim: int) -> tuple[float, ...] | None:
    """Voxel spacing as ``ndim`` positive finite floats, or None when not given."""
    if spacing is None:
        return None
    try:
        values = tuple(float(s) for s in spacing)
    except (TypeError, ValueError):
        raise ConfigError(f"spacing {spacing!r} must be {ndim} positive numbers") from None
    if len(values) != ndim or not all(math.isfinite(s) and s > 0 for s in values):
        raise ConfigError(f"spacing {values} must be {ndim} positive numbers")
    return values


def check_volume_shape(shape: tuple[int, ...], dtype) -> None:
    """The checks that need only shape and dtype (no pixel is read): dtype, 3D/4D, not RGB.

    The napari widget calls this on lazy layers, so it must never touch the data.
    """
    dtype = np.dtype(dtype)
    if dtype.name not in SUPPORTED_DTYPES:
        raise ConfigError(
            f"unsupported dtype {dtype.name}: expected one of {', '.join(SUPPORTED_DTYPES)}"
        )
    if len(shape) == 3 and shape[-1] in (3, 4) and dtype == np.uint8:
        raise ConfigError(
            f"shape {shape} looks like an RGB(A) image; MoEC compresses 3D/4D volumes"
        )
    if len(shape) not in (3, 4) or sum(n > 1 for n in shape) < 3:
        raise ConfigError(
            f"expected a 3D (ZYX) or 4D (TZYX/CZYX) volume with at least 3 axes longer than 1, "
            f"got shape {tuple(shape)}"
        )


def check_volume(array: object, *, allow_constant: bool = False) -> np.ndarray:
    """Return ``array`` as an ndarray, or raise :class:`ConfigError` naming what is wrong.

    Reads every voxel (NaN/Inf, constant). ``allow_constant`` is for tiles of a larger volume:
    a constant tile is valid there (it is stored as its value), a constant volume is not.
    """
    if not isinstance(array, np.ndarray):
        try:
            array = np.asarray(array)
        except Exception as exc:
            raise ConfigError(f"input is not an array: {type(array).__name__}") from exc
    check_volume_shape(array.shape, array.dtype)
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise ConfigError("volume contains NaN or infinite values")
    if not allow_constant and array.min() == array.max():
        raise ConfigError(f"volume is constant (every voxel is {array.flat[0]}); nothing to learn")
    return array
