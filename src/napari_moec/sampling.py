"""Volumes as the network sees them: validation, intensity normalisation and coordinates.

A voxel index ``i`` along an axis of ``N`` voxels maps to the coordinate ``-1 + 2 i / (N - 1)``
(0 when N is 1), so the corner voxels sit exactly on the cube's corners and a strided or ROI
grid lands on the same coordinates as the full one. Training samples random flat indices on the
device and turns them into coordinates there: no per-step host-to-device copy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .errors import ConfigError

__all__ = [
    "SUPPORTED_DTYPES",
    "Normalization",
    "axis_coords",
    "check_volume",
    "flat_index_coords",
]

SUPPORTED_DTYPES = ("uint8", "uint16", "int16", "float32")


def check_volume(array: object) -> np.ndarray:
    """Return ``array`` as an ndarray, or raise :class:`ConfigError` naming what is wrong."""
    if not isinstance(array, np.ndarray):
        try:
            array = np.asarray(array)
        except Exception as exc:
            raise ConfigError(f"input is not an array: {type(array).__name__}") from exc
    if array.dtype.name not in SUPPORTED_DTYPES:
        raise ConfigError(
            f"unsupported dtype {array.dtype.name}: expected one of {', '.join(SUPPORTED_DTYPES)}"
        )
    if array.ndim == 3 and array.shape[-1] in (3, 4) and array.dtype == np.uint8:
        raise ConfigError(
            f"shape {array.shape} looks like an RGB(A) image; MoEC compresses 3D/4D volumes"
        )
    if array.ndim not in (3, 4) or sum(n > 1 for n in array.shape) < 3:
        raise ConfigError(
            f"expected a 3D (ZYX) or 4D (TZYX/CZYX) volume with at least 3 axes longer than 1, "
            f"got shape {array.shape}"
        )
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise ConfigError("volume contains NaN or infinite values")
    if array.min() == array.max():
        raise ConfigError(f"volume is constant (every voxel is {array.flat[0]}); nothing to learn")
    return array


@dataclass(frozen=True)
class Normalization:
    """Affine map of intensities ``[vmin, vmax]`` to the training range ``[lo, hi]``.

    The paper trains on intensities scaled to 0..100 (§4.1); we default to [-1, 1], which
    matches the output scale of a SIREN at initialisation (measured in docs/benchmarks.md).
    """

    vmin: float
    vmax: float
    lo: float = -1.0
    hi: float = 1.0

    @classmethod
    def of(cls, array: np.ndarray, lo: float = -1.0, hi: float = 1.0) -> Normalization:
        return cls(float(array.min()), float(array.max()), float(lo), float(hi))

    @property
    def scale(self) -> float:
        return (self.hi - self.lo) / (self.vmax - self.vmin)

    def apply(self, array: np.ndarray) -> np.ndarray:
        """Intensities -> training range, float32."""
        return ((array.astype(np.float64) - self.vmin) * self.scale + self.lo).astype(np.float32)

    def invert(self, values: np.ndarray, dtype: np.dtype) -> np.ndarray:
        """Training range -> intensities in ``dtype``, clipped to the recorded [vmin, vmax]
        (the original had no values outside it) and rounded for integer dtypes."""
        out = (values.astype(np.float64) - self.lo) / self.scale + self.vmin
        out = np.clip(out, self.vmin, self.vmax)
        if np.dtype(dtype).kind in "iu":
            out = np.rint(out)
        return out.astype(dtype)


def axis_coords(size: int, start: int = 0, stop: int | None = None, step: int = 1) -> np.ndarray:
    """Coordinates in [-1, 1] of voxels ``start:stop:step`` of an axis of ``size`` voxels."""
    index = np.arange(start, size if stop is None else stop, step, dtype=np.float64)
    if size == 1:
        return np.zeros_like(index, dtype=np.float32)
    return (index * (2.0 / (size - 1)) - 1.0).astype(np.float32)


def flat_index_coords(flat: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Coordinates (B, ndim) float32 of C-order flat voxel indices (B,), on their device."""
    coords = []
    for size in reversed(shape):
        index = flat % size
        flat = torch.div(flat, size, rounding_mode="floor")
        scale = 0.0 if size == 1 else 2.0 / (size - 1)
        coords.append(index.float() * scale - (0.0 if size == 1 else 1.0))
    return torch.stack(coords[::-1], dim=1)
