"""Lazy volumes for napari: array-likes that decode only the voxels napari asks for.

napari slices a layer's data (``data[level][corners][z]``) and then calls ``np.asarray`` on the
result. A :class:`LazyVolume` answers each ``[...]`` with another lazy view (no work) and, when
napari finally materialises the view, decodes exactly those voxels, block by block: a block is a
tile of a tiled store or a fixed cube of a single ``.moec`` (:mod:`._lazy_blocks`). An implicit
network decodes any voxel on its own, so a 512 x 512 plane through 128³ tiles costs 512² network
evaluations, not the 16 tiles' 33 M that a dask array with one chunk per tile would compute
before slicing (dask cannot push napari's slice into a custom chunk function).

Decoded block parts go into :data:`CACHE`, one bounded LRU per process (bytes, not entries):
going back to a plane seen before, or the image and the expert labels of the same plane (one
network pass gives both), costs no decode. Keys include each block's version (a tile's CRC), so
a store being written shows each new tile at the next read.
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from itertools import pairwise, product
from typing import Any, Protocol

import numpy as np

__all__ = ["CACHE", "Blocks", "DecodedCache", "LazyVolume"]

#: Bytes of decoded voxels kept per process (values and labels together).
CACHE_BYTES = 256 * 2**20


class DecodedCache:
    """A thread-safe LRU of decoded block parts, bounded by their bytes.

    napari slices on the GUI thread while the widget's worker may warm the same entries, hence
    the lock. An entry larger than the whole budget is not kept.
    """

    def __init__(self, max_bytes: int = CACHE_BYTES) -> None:
        self.max_bytes = max_bytes
        self.nbytes = 0
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[tuple, tuple] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple):
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return entry[0]

    def put(self, key: tuple, value, nbytes: int) -> None:
        if nbytes > self.max_bytes:
            return
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self.nbytes -= old[1]
            self._entries[key] = (value, nbytes)
            self.nbytes += nbytes
            while self.nbytes > self.max_bytes:
                _, (_, size) = self._entries.popitem(last=False)
                self.nbytes -= size

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.nbytes = 0

    def __len__(self) -> int:
        return len(self._entries)


#: The process-wide cache of every lazy volume.
CACHE = DecodedCache()


class Blocks(Protocol):
    """What a lazy volume decodes from: a grid of blocks, each decodable on any voxel subset."""

    shape: tuple[int, ...]  #: the volume at full resolution
    block: tuple[int, ...]  #: block edge per axis (a tile)
    dtype: np.dtype  #: values
    label_dtype: np.dtype | None  #: labels, or None when the source has none
    token: str  #: identifies the source in cache keys

    def fetch(self, index: tuple[int, ...]) -> tuple[Any, Any]:
        """``(version, payload)`` of block ``index``; version None: the block is all fill."""

    def fill(self, labels: bool):
        """The value of absent blocks (labels: 0, no expert)."""

    def decode(self, index, payload, local: Sequence[np.ndarray]) -> tuple:
        """``(values, labels)`` of block ``index`` on the outer grid of the sorted block-local
        indices ``local`` (labels None when the source has none)."""


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """Decode on one torch thread (this thread only: OpenMP's thread count is per thread).

    A block part is small (a tile's share of a plane: ~16k voxels), and intra-op threads cost
    more than they give there: measured on the shared 2-core machine under load ~3, a 128 x 128
    plane part of a width-28 tile took 10 ms on one thread and 190 ms on two.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _digest(arrays: Sequence[np.ndarray]) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    for a in arrays:
        h.update(len(a).to_bytes(8, "little"))
        h.update(np.ascontiguousarray(a, dtype=np.int64).tobytes())
    return h.digest()


def _normalize_key(key, ndim: int) -> list:
    """``key`` as one int or slice per axis (Ellipsis expanded)."""
    key = key if isinstance(key, tuple) else (key,)
    if any(k is None for k in key):
        raise IndexError("lazy volumes do not add axes (None / np.newaxis)")
    if sum(k is Ellipsis for k in key) > 1:
        raise IndexError("an index can only have a single ellipsis")
    if Ellipsis in key:
        at = key.index(Ellipsis)
        key = key[:at] + (slice(None),) * (ndim - len(key) + 1) + key[at + 1 :]
    if len(key) > ndim:
        raise IndexError(f"too many indices: {len(key)} for {ndim} axes")
    return list(key) + [slice(None)] * (ndim - len(key))


class LazyVolume:
    """One resolution level of a decodable volume, or a view of one; behaves like a read-only
    numpy array for napari (``shape``, ``dtype``, ``ndim``, ``chunks``, ``[...]``,
    ``np.asarray``).

    Parameters
    ----------
    blocks
        The source (:mod:`._lazy_blocks`).
    stride
        Level grid step per axis: level voxel ``i`` is volume voxel ``i * stride``.
    labels
        Decode the expert labels instead of the values.
    cache
        Where decoded parts are kept (None: nowhere, e.g. for a streaming comparison).
    """

    def __init__(self, blocks: Blocks, stride=1, *, labels: bool = False,
                 cache: DecodedCache | None = CACHE, _axes=None) -> None:  # fmt: skip
        ndim = len(blocks.shape)
        stride = (stride,) * ndim if isinstance(stride, int) else tuple(stride)
        if len(stride) != ndim or any(s < 1 for s in stride):
            raise ValueError(f"stride must be positive, one per axis: {stride}")
        if labels and blocks.label_dtype is None:
            raise ValueError("this source has no labels")
        self.blocks, self.stride, self.labels, self.cache = blocks, stride, labels, cache
        if _axes is None:
            _axes = [np.arange(math.ceil(n / s)) for n, s in zip(blocks.shape, stride, strict=True)]
        #: Per volume axis: the level indices kept (an array), or the one index (an int).
        self._axes: list = _axes

    # -- the array protocol napari uses ----------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(len(a) for a in self._axes if not isinstance(a, int))

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.blocks.label_dtype if self.labels else self.blocks.dtype)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def chunks(self) -> tuple[tuple[int, ...], ...]:
        """Dask-style chunk sizes: runs of voxels in the same block (tile), so napari widens
        what it reads to whole tiles in the displayed plane, as it does for zarr."""
        out = []
        for a, s, b in zip(self._axes, self.stride, self.blocks.block, strict=True):
            if isinstance(a, int):
                continue
            tiles = (a * s) // b
            edges = np.flatnonzero(np.diff(tiles)) + 1
            out.append(tuple(int(n) for n in np.diff(np.r_[0, edges, len(a)])))
        return tuple(out)

    def __repr__(self) -> str:
        kind = "labels" if self.labels else "values"
        return f"LazyVolume({self.blocks.token}, {kind}, stride={self.stride}, shape={self.shape})"

    def __getitem__(self, key) -> LazyVolume | Any:
        kept = [i for i, a in enumerate(self._axes) if not isinstance(a, int)]
        axes = list(self._axes)
        for axis, k in zip(kept, _normalize_key(key, len(kept)), strict=True):
            current = axes[axis]
            if isinstance(k, slice):
                axes[axis] = current[k]
            elif isinstance(k, int | np.integer):
                n = len(current)
                if not -n <= int(k) < n:
                    raise IndexError(f"index {int(k)} is out of bounds for size {n}")
                axes[axis] = int(current[int(k)])
            else:
                raise TypeError(f"lazy volumes take ints and slices, not {type(k).__name__}")
        view = LazyVolume(self.blocks, self.stride, labels=self.labels, cache=self.cache,
                          _axes=axes)  # fmt: skip
        return view.read()[()] if view.ndim == 0 else view

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self.read()
        return out if dtype is None else out.astype(dtype, copy=False)

    def block_indices(self) -> set[tuple[int, ...]]:
        """The blocks (tiles) this view touches, without decoding anything."""
        per_axis = []
        for a, s, b in zip(self._axes, self.stride, self.blocks.block, strict=True):
            per_axis.append([int(c) for c in np.unique((np.atleast_1d(a) * s) // b)])
        return set(product(*per_axis))

    def with_cache(self, cache: DecodedCache | None) -> LazyVolume:
        """The same view, keeping its decoded parts in ``cache`` (None: not at all)."""
        return LazyVolume(self.blocks, self.stride, labels=self.labels, cache=cache,
                          _axes=list(self._axes))  # fmt: skip

    # -- decoding ----------------------------------------------------------------------------
    def read(self) -> np.ndarray:
        """Decode this view: only the blocks it touches, only its voxels in each."""
        full, inverse = [], []
        for a in self._axes:  # read sorted unique indices, then undo any reordering
            a = np.atleast_1d(np.asarray(a))
            u, inv = np.unique(a, return_inverse=True)
            full.append(u)
            inverse.append(None if len(u) == len(a) and (u == a).all() else inv)
        out = self._read_sorted(full)
        for axis, inv in enumerate(inverse):
            if inv is not None:
                out = np.take(out, inv, axis=axis)
        dropped = tuple(0 if isinstance(a, int) else slice(None) for a in self._axes)
        return out[dropped]

    def _read_sorted(self, level_axes: list[np.ndarray]) -> np.ndarray:
        blocks = self.blocks
        out = np.empty(tuple(len(a) for a in level_axes), self.dtype)
        groups = []  # per axis: [(block coordinate, output slice, block-local indices), ...]
        for a, s, b in zip(level_axes, self.stride, blocks.block, strict=True):
            volume = a * s
            tiles = volume // b
            edges = np.r_[0, np.flatnonzero(np.diff(tiles)) + 1, len(a)]
            groups.append([(int(tiles[i]), slice(i, j), volume[i:j] - tiles[i] * b)
                           for i, j in pairwise(edges)])  # fmt: skip
        for combo in product(*groups):
            index = tuple(c for c, _, _ in combo)
            target = tuple(sl for _, sl, _ in combo)
            local = [loc for _, _, loc in combo]
            out[target] = self._block_part(index, local)
        return out

    def _block_part(self, index, local) -> np.ndarray | Any:
        version, payload = self.blocks.fetch(index)
        if version is None:
            return self.blocks.fill(self.labels)
        key = (self.blocks.token, index, version, _digest(local))
        parts = self.cache.get(key) if self.cache is not None else None
        if parts is None:
            with one_torch_thread():
                parts = self.blocks.decode(index, payload, local)
            if self.cache is not None:
                nbytes = sum(p.nbytes for p in parts if p is not None)
                self.cache.put(key, parts, nbytes)
        return parts[1] if self.labels else parts[0]


def pyramid(blocks: Blocks, *, labels: bool = False, smallest: int = 64,
            cache: DecodedCache | None = CACHE) -> list[LazyVolume]:  # fmt: skip
    """Levels at strides 1, 2, 4, ... of the three spatial (last) axes until the largest
    spatial side is at most ``smallest``: napari shows the coarsest level in 3D view and makes
    thumbnails from it, so it must decode in well under a second (64³: 262 144 voxels).

    At least two levels, so that napari always treats the layer as multiscale (napari 0.9's
    Labels layer rejects a one-level list) and reads only the part of a plane on screen.
    """
    ndim = len(blocks.shape)
    levels, k = [], 0
    while True:
        s = 2**k
        stride = (1,) * (ndim - 3) + (s,) * 3
        levels.append(LazyVolume(blocks, stride, labels=labels, cache=cache))
        if k >= 1 and max(math.ceil(n / s) for n in blocks.shape[-3:]) <= smallest:
            return levels
        k += 1
