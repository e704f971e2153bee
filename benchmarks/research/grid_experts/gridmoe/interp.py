"""Separable interpolation of small latent grids onto a voxel lattice.

A level's grid has ``g_k`` nodes along axis k of a volume with ``N_k`` voxels; nodes and voxels
share the corners (``align_corners``): voxel ``i`` sits at grid coordinate ``i (g-1)/(N-1)``.
Upsampling is a product of one small matrix per axis (``M_k``: rows = requested voxels,
columns = grid nodes), so

* any shape (not powers of two) and 3D or 4D volumes work the same way;
* a region ``start:stop:step`` of any axis is just a subset of rows: random access costs
  ``taps^ndim`` grid reads per voxel and never touches the rest of the volume;
* the backward pass is the transposed products (no scatter-add), fast on one CPU thread.

Kernels: ``linear`` (2 taps, the trilinear of grid_sample) and ``cubic`` (uniform cubic
B-spline, 4 taps, C2-smooth; edges replicate). Weights are computed in float64 from
+,-,*,/ only, then cast to float32.
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["level_shapes", "interp_matrix", "axis_mats", "upsample"]


#: Axes of <= KEEP_AXIS voxels keep one node per voxel at every level. 0 (default) = downsample
#: every axis: on the 3-frame 4D EPI that measured +0.5-0.9 dB over keeping T (8) at full
#: resolution, although frame 0 differs from frames 1-2 by 23 dB (REPORT.md section 9).
KEEP_AXIS = 0


def level_shapes(shape: tuple[int, ...], num_levels: int, first_level: int = 0,
                 min_size: int = 2, keep_axis: int = KEEP_AXIS) -> list[tuple[int, ...]]:
    """Grid shape of each level: level l has ``ceil((N-1)/2^l)+1`` nodes per axis (>= min_size;
    all N nodes for axes of <= KEEP_AXIS voxels), so level 0 is the voxel lattice itself."""
    out = []
    for lvl in range(first_level, first_level + num_levels):
        g = []
        for n in shape:
            if n <= keep_axis:
                g.append(n)
            else:
                g.append(min(n, max(min_size, math.ceil((n - 1) / 2**lvl) + 1)))
        out.append(tuple(g))
    return out


def interp_matrix(n: int, g: int, kernel: str = "linear", start: int = 0,
                  stop: int | None = None, step: int = 1) -> torch.Tensor:
    """(rows, g) float32 weights mapping ``g`` grid nodes to voxels ``start:stop:step`` of ``n``."""
    idx = np.arange(start, n if stop is None else stop, step, dtype=np.float64)
    rows = idx.size
    m = np.zeros((rows, g), dtype=np.float64)
    if g == 1 or n == 1:
        m[:, 0] = 1.0
        return torch.from_numpy(m.astype(np.float32))
    if g == n:  # one node per voxel: every kernel reduces to picking the node
        m[np.arange(rows), idx.astype(np.int64)] = 1.0
        return torch.from_numpy(m.astype(np.float32))
    x = idx * (g - 1) / (n - 1)
    i0 = np.minimum(np.floor(x).astype(np.int64), g - 2)
    t = x - i0
    r = np.arange(rows)
    if kernel == "linear":
        m[r, i0] += 1.0 - t
        m[r, i0 + 1] += t
    elif kernel == "cubic":  # uniform cubic B-spline, taps at i0-1 .. i0+2, edges replicated
        t2, t3 = t * t, t * t * t
        w = [(1 - 3 * t + 3 * t2 - t3) / 6, (4 - 6 * t2 + 3 * t3) / 6,
             (1 + 3 * t + 3 * t2 - 3 * t3) / 6, t3 / 6]
        for k, wk in zip(range(-1, 3), w):
            np.add.at(m, (r, np.clip(i0 + k, 0, g - 1)), wk)
    else:
        raise ValueError(f"unknown kernel {kernel!r}")
    return torch.from_numpy(m.astype(np.float32))


def axis_mats(shape, grid_shapes, kernel="linear", region=None):
    """Per level, per axis matrices for ``region`` (list of (start, stop, step) or None)."""
    region = region or [(0, n, 1) for n in shape]
    out = []
    for gs in grid_shapes:
        level = []
        for n, g, reg in zip(shape, gs, region):
            m = interp_matrix(n, g, kernel, *reg)
            # Level-0 axes at full extent are the identity: skip them (None).
            level.append(None if m.shape[0] == g and torch.equal(m, torch.eye(g)) else m)
        out.append(level)
    return out


def upsample(grid: torch.Tensor, mats: list[torch.Tensor]) -> torch.Tensor:
    """Apply ``mats[k]`` along axis k of ``grid`` (any number of axes)."""
    out = grid
    for k, m in enumerate(mats):
        if m is None:
            continue
        moved = out.movedim(k, -1)
        out = (moved @ m.t()).movedim(-1, k)
    return out

