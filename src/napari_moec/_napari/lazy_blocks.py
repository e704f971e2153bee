"""What napari's lazy layers decode from (:class:`~.lazy.Blocks`): the tiles of a tiled store,
fixed cubes of a single ``.moec`` file, and the difference between a decoded volume and its
original (Compare on data that does not fit in memory).
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .layers import expert_labels_for_display

__all__ = [
    "DECODED_BLOCKS",
    "DifferenceBlocks",
    "LiveStoreBlocks",
    "MoecBlocks",
    "TiledBlocks",
    "read_points",
]

#: Block decodes of single ``.moec`` files in this process (tests check laziness with it; tiled
#: stores count in :data:`napari_moec.tiled.tiledecode.DECODE_COUNTS`).
DECODED_BLOCKS: Counter = Counter()
#: Cube edge of a single file's blocks: its unit of caching (a plane decodes only its voxels).
MOEC_BLOCK = 64
#: Block edge of leading (time/channel) axes, as a tiled store's tiles.
LEADING_BLOCK = 8


def _regular(a: np.ndarray) -> tuple[int, int, int] | None:
    """``(start, stop, step)`` when the sorted indices ``a`` are evenly spaced, else None."""
    if len(a) == 1:
        return int(a[0]), int(a[0]) + 1, 1
    steps = np.diff(a)
    if steps[0] > 0 and (steps == steps[0]).all():
        return int(a[0]), int(a[-1]) + 1, int(steps[0])
    return None


def read_points(array, axes: Sequence[np.ndarray]) -> np.ndarray:
    """``array`` (numpy, dask, zarr or lazy) on the outer grid of sorted indices ``axes``:
    evenly spaced axes become strided slices, which every array library reads lazily."""
    slices, picks = [], []
    for a in axes:
        regular = _regular(a)
        if regular is not None:
            slices.append(slice(*regular))
            picks.append(None)
        else:
            slices.append(slice(int(a[0]), int(a[-1]) + 1))
            picks.append(a - a[0])
    out = np.asarray(array[tuple(slices)])
    for axis, pick in enumerate(picks):
        if pick is not None:
            out = np.take(out, pick, axis=axis)
    return out


class TiledBlocks:
    """The tiles of a tiled store (:class:`~napari_moec.tiled.reader.TiledStore`), each
    decoded on just the voxels asked for; a tile's version is its chunk's length and CRC."""

    def __init__(self, store) -> None:

        self.store = store
        self.spec = store.spec
        self.shape = tuple(self.spec.grid.shape)
        self.block = tuple(self.spec.grid.tile)
        self.dtype = np.dtype(self.spec.values.dtype)
        self.label_dtype = self.spec.label_dtype
        self.token = f"tiled:{store.path}:{uuid.uuid4().hex[:8]}"

    def fetch(self, index):
        data = self.store.chunk(index)
        return (None, None) if data is None else ((len(data), data[-4:]), data)

    def fill(self, labels: bool):
        return 0 if labels else self.store.fill_value

    def decode(self, index, payload, local):
        from napari_moec.tiled.store import chunk_key
        from napari_moec.tiled.tiledecode import decode_tile

        return decode_tile(self.spec, payload, local, fill_value=self.store.fill_value,
                           name=f"{self.store.path}/{chunk_key(index)}", expected_index=index,
                           labels=True)  # fmt: skip


class MoecBlocks:
    """A single ``.moec`` volume cut into cubes of :data:`MOEC_BLOCK` voxels: each request
    evaluates the network on its own voxels only. Labels are shown as expert index + 1."""

    def __init__(self, compressed, block: int = MOEC_BLOCK) -> None:
        header = compressed.header
        self.compressed = compressed
        self.shape = tuple(header.shape)
        ndim = len(self.shape)
        self.block = (LEADING_BLOCK,) * (ndim - 3) + (block,) * 3
        self.dtype = np.dtype(header.dtype)
        self.label_dtype = np.dtype(np.uint8)
        self.token = f"moec:{uuid.uuid4().hex}"

    def fetch(self, index):
        return 0, None

    def fill(self, labels: bool):  # every block exists
        return 0

    def decode(self, index, payload, local):
        DECODED_BLOCKS["moec"] += 1
        volume = [c * b + a for c, b, a in zip(index, self.block, local, strict=True)]
        regular = [_regular(a) for a in volume]
        if all(r is not None for r in regular):
            roi = [(r[0], r[1]) for r in regular]
            values, labels = self.compressed.decode_with_labels(roi, tuple(r[2] for r in regular))
        else:  # irregular picks: decode the bounding box, then take them
            roi = [(int(a[0]), int(a[-1]) + 1) for a in volume]
            values, labels = self.compressed.decode_with_labels(roi)
            grid = np.ix_(*[a - a[0] for a in volume])
            values, labels = values[grid], labels[grid]
        return values, expert_labels_for_display(labels)


class DifferenceBlocks:
    """``decoded - original`` as float32, block by block (the decoded source's blocks), for
    the lazy difference layer of a comparison on big data."""

    def __init__(self, decoded, original) -> None:
        self.decoded = decoded
        self.original = original
        self.shape = decoded.shape
        self.block = decoded.block
        self.dtype = np.dtype(np.float32)
        self.label_dtype = None
        self.token = f"difference:{uuid.uuid4().hex}"

    def fetch(self, index):
        version, payload = self.decoded.fetch(index)
        return (version if version is not None else "fill"), payload

    def fill(self, labels: bool):  # never asked: every block has a difference
        return 0.0

    def decode(self, index, payload, local):
        shape = tuple(len(a) for a in local)
        if payload is None and isinstance(self.decoded, TiledBlocks):
            values = np.full(shape, self.decoded.fill(False), self.decoded.dtype)
        else:
            values = self.decoded.decode(index, payload, local)[0]
        volume = [c * b + a for c, b, a in zip(index, self.block, local, strict=True)]
        original = read_points(self.original, volume)
        return values.astype(np.float32) - original.astype(np.float32), None


class LiveStoreBlocks(TiledBlocks):
    """The tiles of a store still being written (the widget's live layers): blank until the run
    has written the store's metadata (:meth:`attach`), then each tile as soon as it lands.

    Geometry comes from the job before the scan, so the live layers can be made on the Start
    click (layer creation is napari's one slow step) and never replaced during the run.
    """

    def __init__(self, path, shape, tile, dtype, label_dtype) -> None:
        self.path = str(path)
        self.store = None
        self.spec = None
        self.shape, self.block = tuple(shape), tuple(tile)
        self.dtype, self.label_dtype = np.dtype(dtype), np.dtype(label_dtype)
        self.token = f"live:{self.path}:{uuid.uuid4().hex[:8]}"

    def attach(self) -> bool:
        """Open the store once its metadata exists; True when attached."""
        if self.store is None and (Path(self.path) / "0" / "zarr.json").is_file():
            from napari_moec.tiled.reader import open_tiled

            store = open_tiled(self.path)
            self.spec = store.spec
            self.store = store  # last: readers on other threads test this one
        return self.store is not None

    def reattach(self, path) -> None:
        """Read from ``path`` from now on: the ``.ozx`` a finished run packed its folder into.
        The chunks are the same bytes, so every decoded part in the cache stays valid."""
        from napari_moec.tiled.reader import open_tiled

        store = open_tiled(path)
        self.spec, self.store, self.path = store.spec, store, str(path)

    def fetch(self, index):
        store = self.store
        if store is None:
            return None, None
        try:
            return TiledBlocks.fetch(self, index)
        except (OSError, ValueError):  # MoecFormatError is a ValueError
            if (Path(store.path) / "zarr.json").is_file():
                raise
            return None, None  # the folder is being packed into the .ozx: blank until reattach

    def fill(self, labels: bool):
        return 0 if labels or self.store is None else self.store.fill_value
