"""Tile and margin sizes: chosen by the store's model family ("auto"), or given.

"auto" follows the family's :class:`~napari_moec.families.base.TilePolicy` (measured per
family, docs/tiled.md): the smallest edge of ``policy.edges`` whose byte share at the ratio
reaches ``policy.target_bytes`` (a SIREN tile needs about 4 kB to be worth training; a grid
tile's cost is per latent, not per network, and it prefers large tiles), and a margin of
``policy.margin_fraction`` of the edge: the context a tile is trained on beyond its faces
(seams, docs/tiled.md; SIREN 1/8, grid none). An axis that the edge does not divide is split
into as many tiles as the edge gives it, made as equal as multiples of :data:`ALIGN` allow
(:func:`balanced_edge`): 206 voxels with edge 128 become tiles of 112 and 94, not 128 and 78,
and 130 voxels 80 and 50, not 128 and a 2-voxel sliver; the workers then get tiles of similar
cost.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import ConfigError
from ..families.base import TilePolicy

__all__ = ["ALIGN", "LEAD_TILE", "balanced_edge", "choose_margin", "choose_tile"]

#: Leading T/C axis: at most this many time points or channels per tile.
LEAD_TILE = 8
#: "auto" spatial tile sizes are multiples of this (unless a tile spans its whole axis), so
#: that the strides 2^k of a pyramid stay aligned with the chunks (TilePolicy.edges).
ALIGN = 16


def balanced_edge(n: int, edge: int) -> int:
    """The tile size along an axis of ``n`` voxels for an "auto" edge ``edge``: as many tiles
    as ``edge`` needs (``ceil(n / edge)``, never more), as equal as multiples of :data:`ALIGN`
    allow. An uneven split left the last tile of an axis a remnant (the macaque's 168 voxels
    as 128 and 40): a tile's step costs what a full tile's does while it holds a fraction of
    the voxels, and its worker idles beside the full ones."""
    if n <= edge:
        return n
    count = math.ceil(n / edge)
    return min(edge, ALIGN * math.ceil(math.ceil(n / count) / ALIGN))


def choose_tile(
    shape: tuple[int, ...], dtype, ratio: float, tile="auto", *, policy: TilePolicy
) -> tuple[int, ...]:
    """The chunk shape: ``tile`` as given (an int = the spatial edge, or one size per axis), or
    the "auto" choice of ``policy``. Spatial sizes never exceed the volume."""
    ndim = len(shape)
    lead = () if ndim == 3 else (min(shape[0], LEAD_TILE),)
    if isinstance(tile, str):
        if tile != "auto":
            raise ConfigError(f"tile must be 'auto', an integer or one size per axis, got {tile!r}")
        itemsize = np.dtype(dtype).itemsize * (lead[0] if lead else 1)
        edge = policy.edges[-1]
        for candidate in policy.edges:
            if candidate**3 * itemsize / ratio >= policy.target_bytes:
                edge = candidate
                break
        return lead + tuple(balanced_edge(n, edge) for n in shape[-3:])
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


def choose_margin(tile: tuple[int, ...], margin="auto", *, policy: TilePolicy) -> tuple[int, ...]:
    """Context voxels per axis (none on a leading T/C axis): given, or ``policy``'s "auto"."""
    ndim = len(tile)
    lead = () if ndim == 3 else (0,)
    if isinstance(margin, str):
        if margin != "auto":
            raise ConfigError(f"margin must be 'auto' or a number of voxels, got {margin!r}")
        return lead + tuple(
            max(policy.min_margin, math.ceil(t * policy.margin_fraction)) for t in tile[-3:]
        )
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
