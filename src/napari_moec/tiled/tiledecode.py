"""Decode one tile's chunk bytes on any per-axis selection of its voxels: what the zarr codec and
the lazy dask reader both call, so ``zarr.open_array(...)[...]`` and ``open_tiled(...)`` give
the same voxels.

A network tile evaluates only the voxels asked for (a strided grid costs only its own voxels);
in a store with a bound (stream 1.2) its correction stream is applied to the network's values
of exactly those voxels, before any clipping or rounding, decoding only the correction chunks
they touch, so every path (zarr, the lazy reader, ROI and stride) keeps the bound;
``DECODE_COUNTS`` counts tile evaluations per process, so tests can check that a region read
touches only the tiles it overlaps.
"""

from __future__ import annotations

import threading
from collections import Counter, OrderedDict
from collections.abc import Sequence

import numpy as np
import torch

from .. import correction, families
from ..errors import MoecFormatError
from ..sampling import Normalization
from .tileformat import KIND_CONSTANT, Tile, TileSpec, label_dtype, parse_tile

__all__ = ["DECODE_COUNTS", "decode_tile", "label_dtype", "tile_model"]

#: Tile evaluations in this process, by kind ("network", "constant"); for tests and benchmarks.
DECODE_COUNTS: Counter = Counter()
#: Built networks kept per process: re-reading a chunk (napari panning) skips entropy decoding.
_CACHE_SIZE = 64
_cache: OrderedDict[bytes, torch.nn.Module] = OrderedDict()
_cache_lock = threading.Lock()


def tile_model(spec: TileSpec, tile: Tile, name: str) -> torch.nn.Module:
    """The network of a parsed network tile, rebuilt by the store's model family from its
    payload (cached by its bytes)."""
    key = tile.payload + repr((tile.index, tile.model)).encode()
    with _cache_lock:
        model = _cache.get(key)
        if model is not None:
            _cache.move_to_end(key)
            return model
    family = spec.networks.family
    try:
        weights = families.codec(family).unpack_payload(
            tile.model, spec.networks.quant, tile.payload
        )
    except MoecFormatError as exc:
        raise MoecFormatError(f"chunk {name}: {exc}") from None
    model = families.get(family).model_from_weights(tile.model, weights)
    with _cache_lock:
        _cache[key] = model
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return model


def decode_tile(
    spec: TileSpec,
    data: bytes,
    axes: Sequence[np.ndarray],
    *,
    fill_value=0,
    name: str = "?",
    expected_index=None,
    labels: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Voxels of one chunk on the outer grid of ``axes`` (sorted chunk-local indices per axis).

    Returns the values in the array's dtype, or with ``labels=True`` (values, label ids). Indices
    beyond the volume (edge chunks) get ``fill_value`` and label 0. Raises MoecFormatError
    naming the chunk for any invalid byte.
    """
    tile = parse_tile(spec, data, name=name, expected_index=expected_index)
    dtype = np.dtype(spec.values.dtype)
    shape = tuple(len(a) for a in axes)
    values = np.full(shape, fill_value, dtype=dtype)
    ids = np.zeros(shape, dtype=spec.label_dtype) if labels else None
    extent = [s.stop - s.start for s in spec.grid.tile_slices(tile.index)]
    inside = [np.asarray(a)[np.asarray(a) < n] for a, n in zip(axes, extent, strict=True)]
    target = tuple(slice(0, len(a)) for a in inside)  # sorted: valid indices come first
    if any(len(a) == 0 for a in inside):
        return (values, ids) if labels else values
    if tile.kind == KIND_CONSTANT:
        DECODE_COUNTS["constant"] += 1
        values[target] = tile.value
        return (values, ids) if labels else values
    DECODE_COUNTS["network"] += 1
    model = tile_model(spec, tile, name)
    offset = [t.start for t in spec.grid.tile_in_region(tile.index)]
    region = tuple(s.stop - s.start for s in spec.grid.region_slices(tile.index))
    roi, strides, picks = [], [], []
    for a, off in zip(inside, offset, strict=True):
        steps = np.diff(a)
        if len(a) == 1 or (steps[0] > 0 and np.all(steps == steps[0])):
            step = int(steps[0]) if len(a) > 1 else 1
            roi.append((off + int(a[0]), off + int(a[-1]) + 1))
            strides.append(step)
            picks.append(slice(None))
        else:  # irregular selection: decode its bounding range, then pick
            roi.append((off + int(a[0]), off + int(a[-1]) + 1))
            strides.append(1)
            picks.append(a - a[0])
    family = families.get(spec.networks.family)
    with torch.no_grad():
        raw, top1 = family.decode_region(
            model, region, tuple(roi), tuple(strides), values=True, labels=labels
        )
    norm = Normalization(spec.values.vmin, spec.values.vmax, *spec.values.norm)
    if tile.correction is None:
        decoded = norm.invert(raw, dtype)
    else:  # 1.2: the tile's stream corrects the network's unclipped, unrounded values
        local = tuple((a - off, b - off) for (a, b), off in zip(roi, offset, strict=True))
        try:  # its chunks are entropy-decoded only now: a corrupt one is found here
            decoded = correction.apply(
                tile.correction, correction.data_units(raw, norm), local, tuple(strides)
            )
        except MoecFormatError as exc:
            raise MoecFormatError(f"chunk {name}: correction: {exc}") from None
    if any(not isinstance(p, slice) for p in picks):
        grid = np.ix_(*[np.arange(n) if isinstance(p, slice) else p
                        for p, n in zip(picks, raw.shape, strict=True)])  # fmt: skip
        decoded, top1 = decoded[grid], (None if top1 is None else top1[grid])
    values[target] = decoded
    if labels:
        ids[target] = (
            1 + spec.grid.flat(tile.index) * spec.networks.experts + top1.astype(ids.dtype)
        )
        return values, ids
    return values
