"""Tiled MoEC: volumes larger than memory, one network per tile (the run's model family),
stored as an OME-Zarr image (NGFF 0.5, zarr v3) whose chunks are tiles and compressed as Dask
distributed tasks.

The only part of napari-moec that imports Dask. This package's ``__init__`` imports nothing
heavy: zarr loads :mod:`.codec` through its entry point to read a store, and that must not pull
in Dask distributed. Layers inside: :mod:`.tileformat` (the byte spec), :mod:`.codec` and
:mod:`.tiledecode` (reading), :mod:`.sources`, :mod:`.scan`, :mod:`.allocate`, :mod:`.store`,
:mod:`.task` (one tile, run on a worker), :mod:`.runner` (the Dask client side), :mod:`.reader`
(lazy dask arrays), :mod:`.cli`. Docs: docs/tiled.md.
"""

from __future__ import annotations

from importlib import import_module

__all__ = [
    "TileFinished",
    "TiledCompressor",
    "TiledReport",
    "TiledStarted",
    "TiledStore",
    "compress_tiled",
    "open_tiled",
]

_LAZY = {
    "TiledCompressor": ".runner",
    "compress_tiled": ".runner",
    "TiledStore": ".reader",
    "open_tiled": ".reader",
    "TileFinished": ".events",
    "TiledReport": ".events",
    "TiledStarted": ".events",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
