"""The scan: one cheap pass over every tile before any training.

It finds what must fail early (NaN/Inf, with the tile that holds it), the volume's intensity
range (the normalisation all tiles share), the constant tiles (stored as their value, or not at
all), and each tile's *difficulty* for rate allocation: the mean squared error of the tile against
its own block-mean approximation at ``probe_factor(ratio)`` voxels per block edge. That is the
distortion of the downsampling baseline at the ratio asked for, which the MoEC networks track
within a few dB (docs/benchmarks.md), so it ranks tiles by how many bytes they need at about the
cost of reading them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["TileStats", "probe_factor", "tile_stats"]


@dataclass(frozen=True)
class TileStats:
    """What the scan learned about one tile (``probe`` in squared intensity units)."""

    index: tuple[int, ...]
    voxels: int
    vmin: float
    vmax: float
    finite: bool
    probe: float

    @property
    def constant(self) -> bool:
        return self.finite and self.vmin == self.vmax


def probe_factor(ratio: float, spatial_axes: int = 3) -> int:
    """Block edge of the difficulty probe: the downsampling factor that meets ``ratio``."""
    return int(min(16, max(2, round(ratio ** (1 / spatial_axes)))))


def tile_stats(index: tuple[int, ...], block: np.ndarray, factor: int) -> TileStats:
    """Statistics of one tile's voxels ``block`` (the tile only, no margin)."""
    index = tuple(int(c) for c in index)
    if block.dtype.kind == "f" and not np.isfinite(block).all():
        return TileStats(index, block.size, math.nan, math.nan, False, math.nan)
    vmin, vmax = float(block.min()), float(block.max())
    if vmin == vmax:
        return TileStats(index, block.size, vmin, vmax, True, 0.0)
    return TileStats(index, block.size, vmin, vmax, True, _block_mse(block, factor))


def _block_mse(block: np.ndarray, factor: int) -> float:
    """Mean squared deviation of voxels from the mean of their ``factor``-edge spatial block
    (the last three axes; a leading T/C axis is not pooled)."""
    x = block.astype(np.float64)
    lead = x.ndim - 3
    crop = tuple(slice(None) if a < lead else slice(0, n - n % min(factor, n))
                 for a, n in enumerate(x.shape))  # fmt: skip
    x = x[crop]
    shape = []
    for a, n in enumerate(x.shape):
        if a < lead:
            shape.append(n)
        else:
            f = min(factor, n)
            shape += [n // f, f]
    pooled_axes = tuple(lead + 2 * k + 1 for k in range(3))
    blocks = x.reshape(shape)
    count = math.prod(shape[a] for a in pooled_axes)
    sums = blocks.sum(axis=pooled_axes)
    sse = float((x * x).sum() - (sums * sums).sum() / count)
    return max(0.0, sse) / x.size
