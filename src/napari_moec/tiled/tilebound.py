"""One network tile under a quality promise: ``--max-error`` (a verified correction stream per
tile) and ``--psnr`` (the smallest payload whose tile PSNR over the *store's* range reaches the
target). :mod:`.task` trains the tile and calls these; the rules live here.

The prediction a reader corrects is the one :func:`~.tiledecode.decode_tile` computes: the
stored (dequantized) network of the tile's *region* (tile plus margin) evaluated on the tile's
voxels, in the data's units, neither clipped nor rounded (:func:`tile_prediction`). The writer
codes the tile's own voxels against it (:func:`correct_tile`), with the clip range and margin
of the *store's* range: every tile shares the normalisation, so a reader's float disagreement
scales with the store's range, and that is what the margin must absorb (a tile's narrower range
would shrink the margin below it). Then the chunk's own bytes are decoded as any reader would
and every voxel checked (:func:`verify_chunk`); a :class:`~napari_moec.correction.BoundViolation`
leaves no chunk behind. Constant and empty tiles are exact (their one value is stored in the
dtype), so they keep any bound.

PSNR: the store's MSE is the voxel-weighted mean of its tiles' MSEs, all over the store's range,
so tiles that each reach ``P`` (and land within a few tenths above it, the grid family's
:func:`~napari_moec.families.grid.fit.fit_quality`) make a store that reaches ``P``; constant
tiles are exact and only lift it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from .. import bounded, correction
from ..sampling import Normalization
from .tiledecode import decode_tile
from .tileformat import TileSpec

__all__ = ["correct_tile", "tile_prediction", "tile_psnr", "verify_chunk"]


def _norm(spec: TileSpec) -> Normalization:
    return Normalization(spec.values.vmin, spec.values.vmax, *spec.values.norm)


def tile_prediction(family, stored: torch.nn.Module, spec: TileSpec, index, device) -> np.ndarray:
    """The stored network's normalised values on tile ``index``'s voxels (float32, the tile's
    shape): the region's network on the tile as a region of interest, as the tile decoder
    evaluates it."""
    roi = spec.grid.tile_box_in_region(index)
    with torch.no_grad():
        values, _ = family.decode_region(
            stored, spec.region_shape(index), roi, (1,) * spec.grid.ndim, device=device,
            values=True, labels=False,
        )  # fmt: skip
    return values


def tile_psnr(spec: TileSpec, original: np.ndarray) -> Callable[[np.ndarray], float]:
    """A judge of normalised tile values: the PSNR over the store's range of what a reader
    decodes from them (clipped, rounded, in the dtype) against the tile's ``original``."""
    norm, dtype = _norm(spec), np.dtype(spec.values.dtype)
    span = spec.values.vmax - spec.values.vmin
    x = original.astype(np.float64)

    def psnr(values: np.ndarray) -> float:
        mse = float(np.mean(((norm.invert(values, dtype).astype(np.float64) - x) / span) ** 2))
        return math.inf if mse <= 0 else -10 * math.log10(mse)

    return psnr


def correct_tile(
    spec: TileSpec, index, original: np.ndarray, values: np.ndarray, stored: torch.nn.Module,
    device,
) -> bytes:  # fmt: skip
    """The tile's verified correction stream for the network values ``values``
    (:func:`tile_prediction`) against its ``original`` voxels, with the store's bound and
    range. Voxels where a SIREN MoE's router nearly ties are anchored
    (:func:`~napari_moec.bounded.router_unstable` over the region, cut to the tile).

    Raises
    ------
    BoundViolation
        The stream misses the bound (nothing must be written).
    """
    unstable = bounded.router_unstable(stored, spec.region_shape(index), device)
    if unstable is not None:
        unstable = np.ascontiguousarray(unstable[spec.grid.tile_in_region(index)])
    raw, _, _ = bounded.encode(original, values, _norm(spec), spec.values.max_error, unstable)
    return raw


def verify_chunk(spec: TileSpec, index, data: bytes, original: np.ndarray) -> np.ndarray:
    """Decode the chunk ``data`` from its own bytes as every reader does and return the tile;
    in a store with a bound, every voxel must be within it.

    Raises
    ------
    BoundViolation
        Naming how many voxels miss, the worst error and where.
    """
    decoded = decode_tile(spec, data, [np.arange(n) for n in original.shape],
                          expected_index=index)  # fmt: skip
    bound = spec.values.max_error
    if bound is not None:
        error = np.abs(decoded.astype(np.float64) - original.astype(np.float64))
        if error.max() > bound:
            where = np.unravel_index(int(np.argmax(error)), error.shape)
            raise correction.BoundViolation(
                f"tile {tuple(index)}: {int((error > bound).sum())} voxels of the chunk as "
                f"written exceed max_error {bound} (worst {float(error.max())} at "
                f"{tuple(int(i) for i in where)})"
            )
    return decoded
