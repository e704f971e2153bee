"""Separable interpolation of the small latent grids onto any voxel region.

A level's grid has ``g`` nodes along an axis of ``N`` voxels; nodes and voxels share the
corners (voxel ``i`` sits at grid coordinate ``i (g-1)/(N-1)``). Upsampling is a product of one
small matrix per axis (rows = requested voxels, columns = nodes), so

* any shape works, 3D or 4D, and every axis is handled the same way;
* a region ``start:stop:step`` of an axis is a subset of rows: random access reads only
  ``taps^ndim`` nodes per voxel and never the rest of the volume, and decoding a region gives
  exactly the rows the full decode would;
* the backward pass is the transposed products (no scatter-add), fast on a CPU thread and plain
  matmuls on a GPU. The prototype measured 6 ms for all levels of a 64^3 volume, forward and
  backward, against 20 ms for ``F.interpolate`` (REPORT.md 7).

A grid axis as fine as the voxels (the voxel lattice level, or a short axis such as a 4D
volume's time) needs no weights: each voxel *is* a node. Its selector is ``None`` for the
whole axis and otherwise the nodes' indices (int64), applied as a gather: a product with the
rows of an identity spent ``rows x n`` multiply-adds per grid line on what is a copy (the
voxel-lattice level of a 64^3 volume, trained on strided subsets).

Kernels: ``linear`` (2 taps) and ``cubic`` (uniform cubic B-spline, 4 taps, C2; edge nodes
replicated). Weights are computed in float64 from +, -, *, / only, then cast to float32, so
every platform builds the same matrices.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["Region", "Selector", "axis_matrices", "interp_matrix", "support_box", "upsample"]

#: One ``(start, stop, step)`` per axis, already checked against the shape.
Region = tuple[tuple[int, int, int], ...]
#: What one axis of a level applies (module docstring): ``None`` (the whole axis of a grid as
#: fine as the voxels), float32 ``(rows, g)`` interpolation weights, or int64 node indices (a
#: grid as fine as the voxels, some of them).
Selector = torch.Tensor | None


def interp_matrix(
    n: int, g: int, kernel: str, start: int = 0, stop: int | None = None, step: int = 1
) -> np.ndarray:
    """(rows, g) float32 weights mapping ``g`` nodes to voxels ``start:stop:step`` of ``n``."""
    idx = np.arange(start, n if stop is None else stop, step, dtype=np.float64)
    rows = np.arange(idx.size)
    m = np.zeros((idx.size, g), dtype=np.float64)
    if g == 1 or n == 1:
        m[:, 0] = 1.0
    elif g == n:  # one node per voxel: every kernel picks the node
        m[rows, idx.astype(np.int64)] = 1.0
    else:
        x = idx * (g - 1) / (n - 1)
        i0 = np.minimum(np.floor(x).astype(np.int64), g - 2)
        t = x - i0
        if kernel == "linear":
            m[rows, i0] += 1.0 - t
            m[rows, i0 + 1] += t
        else:  # uniform cubic B-spline, taps i0-1 .. i0+2
            t2, t3 = t * t, t * t * t
            taps = (
                (1 - 3 * t + 3 * t2 - t3) / 6,
                (4 - 6 * t2 + 3 * t3) / 6,
                (1 + 3 * t + 3 * t2 - 3 * t3) / 6,
                t3 / 6,
            )
            for k, w in zip(range(-1, 3), taps, strict=True):
                np.add.at(m, (rows, np.clip(i0 + k, 0, g - 1)), w)
    return m.astype(np.float32)


def axis_matrices(
    shape: tuple[int, ...],
    grid_shapes: list[tuple[int, ...]],
    kernel: str,
    region: Region | None = None,
    device: torch.device | str = "cpu",
) -> list[list[Selector]]:
    """Per level, per axis :data:`Selector` of ``region`` on ``device``: interpolation
    matrices, and for a grid axis as fine as the voxels ``None`` (the whole axis) or the
    requested nodes' indices."""
    region = region or tuple((0, n, 1) for n in shape)
    out = []
    for gs in grid_shapes:
        level: list[Selector] = []
        for n, g, (start, stop, step) in zip(shape, gs, region, strict=True):
            if g == n and (start, stop, step) == (0, n, 1):
                level.append(None)
            elif g == n:
                level.append(torch.arange(start, stop, step, device=device))
            else:
                level.append(
                    torch.from_numpy(interp_matrix(n, g, kernel, start, stop, step)).to(device)
                )
        out.append(level)
    return out


def support_box(
    shape: tuple[int, ...], grid_shape: tuple[int, ...], kernel: str, box
) -> tuple[slice, ...]:
    """The nodes of a level (``grid_shape``) that the voxels of ``box`` (one (start, stop)
    per axis of ``shape``) read: one slice per axis, from the interpolation matrices' nonzero
    columns (a voxel reads a contiguous run of nodes, so their union over a box is a box)."""
    out = []
    for n, g, (a, b) in zip(shape, grid_shape, box, strict=True):
        used = np.flatnonzero(np.abs(interp_matrix(n, g, kernel, a, b)).sum(axis=0) > 0)
        out.append(slice(int(used[0]), int(used[-1]) + 1))
    return tuple(out)


def upsample(grid: torch.Tensor, mats: list[Selector]) -> torch.Tensor:
    """Apply the selector ``mats[k]`` along axis k of ``grid`` (a product, or a gather of
    node indices: the same values, to the bit, as the product with the identity's rows)."""
    out = grid
    for axis, m in enumerate(mats):
        if m is None:
            continue
        if m.dtype == torch.int64:
            out = out.index_select(axis, m)
        else:
            out = (out.movedim(axis, -1) @ m.t()).movedim(-1, axis)
    return out
