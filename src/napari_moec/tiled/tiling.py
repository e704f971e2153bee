"""Tile and margin sizes: chosen from the ratio by measurement ("auto"), or given.

A tile must hold enough bytes for a network worth training: at a fixed ratio a larger tile gets a
wider network, which fits its voxels better, but trains more slowly per step and sees each voxel
less often in a fixed schedule. ``TILE_TARGET_BYTES`` is the per-tile share the measurements in
docs/tiled.md favour; "auto" picks the smallest edge in ``TILE_EDGES`` that reaches it. The margin
is the context a tile is trained on beyond its faces (seams, docs/tiled.md): ``MARGIN_FRACTION``
of the edge.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import ConfigError

__all__ = ["MARGIN_FRACTION", "TILE_EDGES", "TILE_TARGET_BYTES", "choose_margin", "choose_tile"]

#: Spatial tile edges "auto" chooses from (multiples of 16: strides 2^k stay aligned).
TILE_EDGES = (32, 48, 64, 96, 128, 192, 256)
#: Payload bytes per tile that "auto" aims for (docs/tiled.md, tile size sweep).
TILE_TARGET_BYTES = 4096
#: Leading T/C axis: at most this many time points or channels per tile.
LEAD_TILE = 8
#: Margin = this fraction of the tile edge, at least ``MIN_MARGIN`` voxels. Measured on the
#: macaque at 256x with 64^3 tiles (docs/benchmarks/tiled.md, seams): the same voxels lose
#: 1.67 dB on a tile face with no margin, 0.52 dB with 4 voxels (1/16), 0.07 dB with 8 (1/8).
MARGIN_FRACTION = 1 / 8
MIN_MARGIN = 2


def choose_tile(shape: tuple[int, ...], dtype, ratio: float, tile="auto") -> tuple[int, ...]:
    """The chunk shape: ``tile`` as given (an int = the spatial edge, or one size per axis), or
    the "auto" choice. Spatial sizes never exceed the volume."""
    ndim = len(shape)
    lead = () if ndim == 3 else (min(shape[0], LEAD_TILE),)
    if isinstance(tile, str):
        if tile != "auto":
            raise ConfigError(f"tile must be 'auto', an integer or one size per axis, got {tile!r}")
        itemsize = np.dtype(dtype).itemsize * (lead[0] if lead else 1)
        edge = TILE_EDGES[-1]
        for candidate in TILE_EDGES:
            if candidate**3 * itemsize / ratio >= TILE_TARGET_BYTES:
                edge = candidate
                break
        return lead + tuple(min(edge, n) for n in shape[-3:])
    if isinstance(tile, int | np.integer) and not isinstance(tile, bool):
        sizes = lead + (int(tile),) * 3
    else:
        try:
            sizes = tuple(int(t) for t in tile)
        except (TypeError, ValueError):
            raise ConfigError(
                f"tile must be 'auto', an integer or per-axis sizes: {tile!r}"
            ) from None
        if len(sizes) != ndim:
            raise ConfigError(f"tile {sizes} must give one size per axis of {shape}")
    if any(t < 2 for t in sizes[-3:]) or any(t < 1 for t in sizes):
        raise ConfigError(f"tile sizes must be >= 2 voxels (spatial), got {sizes}")
    return tuple(min(t, n) for t, n in zip(sizes, shape, strict=True))


def choose_margin(tile: tuple[int, ...], margin="auto") -> tuple[int, ...]:
    """Context voxels per axis (none on a leading T/C axis): given, or "auto"."""
    ndim = len(tile)
    lead = () if ndim == 3 else (0,)
    if isinstance(margin, str):
        if margin != "auto":
            raise ConfigError(f"margin must be 'auto' or a number of voxels, got {margin!r}")
        return lead + tuple(max(MIN_MARGIN, math.ceil(t * MARGIN_FRACTION)) for t in tile[-3:])
    if isinstance(margin, int | np.integer) and not isinstance(margin, bool):
        values = lead + (int(margin),) * 3
    else:
        try:
            values = tuple(int(m) for m in margin)
        except (TypeError, ValueError):
            raise ConfigError(f"margin must be 'auto' or voxels per axis: {margin!r}") from None
    if len(values) != ndim or any(m < 0 for m in values):
        raise ConfigError(f"margin {values} must be >= 0 voxels, one per axis of the tile {tile}")
    return values
