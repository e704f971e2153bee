"""Volumes as the network sees them: intensity normalisation and coordinates.

A voxel index ``i`` along an axis of ``N`` voxels maps to the coordinate ``-1 + 2 i / (N - 1)``
(0 when N is 1), so the corner voxels sit exactly on the cube's corners and a strided or ROI
grid lands on the same coordinates as the full one. Training samples random flat indices on the
device and turns them into coordinates there: no per-step host-to-device copy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "Normalization",
    "axis_coords",
    "flat_index_coords",
    "lattice_sample",
    "region_coords",
]


#: Voxels :meth:`Normalization.apply` converts at a time (8 MB of float64 temporaries).
APPLY_SLAB_VOXELS = 1 << 20


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

    def apply(self, array: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Intensities -> training range, float32; into ``out`` when given (a float32 array
        of ``array``'s shape, which may be ``array`` itself: each slab is read before it is
        written, so a float32 region is normalised in place).

        The arithmetic is float64 (the values do not depend on the input's dtype), done slab by
        slab along the first axis, in one reused float64 buffer: on the whole array at once
        its temporaries peaked at two float64 copies of it, 4x a float32 input's bytes (a 320³
        tile region: 537 MB besides its 131 MB; issue 24's "a worker holds its tile plus
        margin"). Now: the float32 result and an 8 MB buffer (in place: the buffer only).
        """
        array = np.asarray(array)
        if out is None:
            out = np.empty(array.shape, np.float32)
        elif out.dtype != np.float32 or out.shape != array.shape:
            raise ValueError(f"out must be float32 of shape {array.shape}, got {out.dtype}")
        if array.ndim == 0:
            out[...] = (float(array) - self.vmin) * self.scale + self.lo
            return out
        row = max(1, math.prod(array.shape[1:]))
        rows = max(1, APPLY_SLAB_VOXELS // row)
        buffer = np.empty((min(rows, array.shape[0]), *array.shape[1:]), np.float64)
        for start in range(0, array.shape[0], rows):
            chunk = array[start : start + rows]
            part = buffer[: len(chunk)]
            np.subtract(chunk, self.vmin, out=part, dtype=np.float64)
            part *= self.scale
            part += self.lo
            out[start : start + rows] = part
        return out

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


def region_coords(shape: tuple[int, ...], region, device="cpu") -> torch.Tensor:
    """(B, ndim) coordinates in [-1, 1] of the voxels of ``region`` (``(start, stop, step)``
    per axis) of a volume of ``shape``, C order."""
    axes = [
        torch.from_numpy(axis_coords(n, *r)).to(device) for n, r in zip(shape, region, strict=True)
    ]
    grids = torch.meshgrid(*axes, indexing="ij")
    return torch.stack([g.reshape(-1) for g in grids], dim=1)


def lattice_sample(
    shape: tuple[int, ...], max_voxels: int, box: Sequence[tuple[int, int]] | None = None
) -> tuple[list, list[int]]:
    """``(roi, strides)`` of a fixed regular sub-grid of at most ``max_voxels`` voxels of a
    volume of ``shape`` (or of its ``box``, one (start, stop) per axis: a tile inside its
    region): per axis the centre of each cell of a stride, strides grown on the axis with
    the most samples until few enough remain. A family with a separable region decoder
    (grid) decodes it far faster than as many scattered points; it draws nothing random, so
    every payload of a run is judged on the same voxels."""
    box = box or tuple((0, n) for n in shape)
    sizes = [b - a for a, b in box]
    strides, counts = [1] * len(sizes), list(sizes)
    while math.prod(counts) > max_voxels:
        axis = int(np.argmax(counts))
        strides[axis] += 1
        counts[axis] = math.ceil((sizes[axis] - strides[axis] // 2) / strides[axis])
    roi = [(a + s // 2, b) for s, (a, b) in zip(strides, box, strict=True)]
    return roi, strides


def flat_index_coords(flat: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Coordinates (B, ndim) float32 of C-order flat voxel indices (B,), on their device."""
    coords = []
    for size in reversed(shape):
        index = flat % size
        flat = torch.div(flat, size, rounding_mode="floor")
        scale = 0.0 if size == 1 else 2.0 / (size - 1)
        coords.append(index.float() * scale - (0.0 if size == 1 else 1.0))
    return torch.stack(coords[::-1], dim=1)
