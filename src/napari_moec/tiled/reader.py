"""Reading a tiled store: lazy dask arrays of the decoded volume and of the expert partition, at
any region and stride, plus the store's statistics (``moec info``).

Each dask chunk is one tile's part of the grid asked for: building the array reads nothing, and
computing a region decodes only the tiles it overlaps (:data:`~.tiledecode.DECODE_COUNTS`
counts them). ``pyramid()`` gives stride 2^k levels for napari's multiscale view, each computed
per tile from the same networks (an INR has every resolution).
"""

from __future__ import annotations

import math
import threading
import zipfile
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..decode import parse_roi
from ..errors import ConfigError, MoecFormatError
from .store import ARRAY_PATH, chunk_key
from .tiledecode import decode_tile
from .tileformat import CODEC_NAME, TileSpec, parse_tile

__all__ = ["TiledStore", "is_tiled_store", "open_tiled"]


def is_tiled_store(path) -> bool:
    """Whether ``path`` is a tiled MoEC store (a folder with our array, or a ``.ozx``)."""
    path = Path(path)
    if path.suffix.lower() == ".ozx":
        return path.is_file()
    return (path / ARRAY_PATH / "zarr.json").is_file() and CODEC_NAME.encode() in (
        path / ARRAY_PATH / "zarr.json"
    ).read_bytes()


def _stamp(path: str) -> int:
    """Changes when the store is rewritten, so a cached open store is never stale."""
    target = Path(path) if path.lower().endswith(".ozx") else Path(path) / "zarr.json"
    try:
        return target.stat().st_mtime_ns
    except OSError:
        return 0


def _open(path: str):
    return _open_cached(path, _stamp(path))


@lru_cache(maxsize=16)
def _open_cached(path: str, stamp: int):
    """The zarr group and array of a store, opened once per process (dask tasks share it)."""
    import zarr

    store = zarr.storage.ZipStore(path, mode="r") if path.lower().endswith(".ozx") else path
    try:
        group = zarr.open_group(store, mode="r")
        array = group[ARRAY_PATH]
    except (FileNotFoundError, KeyError, ValueError) as exc:
        raise MoecFormatError(f"{path}: not a tiled MoEC store ({exc})") from None
    return group, array


@lru_cache(maxsize=16)
def _zip_cached(path: str, stamp: int) -> tuple[zipfile.ZipFile, threading.Lock]:
    return zipfile.ZipFile(path, mode="r"), threading.Lock()


def _chunk(path: str, index) -> bytes | None:
    """A chunk's bytes, or None where the tile is not written. Read with plain file calls, not
    through zarr's store: zarr's synchronous API hands each read to its event-loop thread and
    waits, and on a busy machine (workers training on every core) each such hand-off cost the
    napari GUI thread tens of milliseconds per tile."""
    key = chunk_key(index)
    if not path.lower().endswith(".ozx"):
        try:
            return (Path(path) / key).read_bytes()
        except FileNotFoundError:
            return None
    archive, lock = _zip_cached(path, _stamp(path))
    with lock:  # one ZipFile handle seeks a shared file object
        try:
            return archive.read(key)
        except KeyError:
            return None


def _decode_part(path: str, spec: TileSpec, index, axes, fill, labels: bool) -> np.ndarray:
    """One dask chunk: tile ``index`` on the chunk-local indices ``axes``."""
    data = _chunk(path, index)
    shape = tuple(len(a) for a in axes)
    if data is None:
        return (
            np.zeros(shape, spec.label_dtype) if labels else np.full(shape, fill, spec.values.dtype)
        )
    out = decode_tile(spec, data, axes, fill_value=fill, name=chunk_key(index),
                      expected_index=index, labels=labels)  # fmt: skip
    return out[1] if labels else out


class TiledStore:
    """An opened tiled store (folder or ``.ozx``). Build with :func:`open_tiled`."""

    def __init__(self, path) -> None:
        self.path = str(Path(path))
        if not Path(self.path).exists():
            raise ConfigError(f"store not found: {self.path}")
        self.group, self.array = _open(self.path)
        codecs = self.array.metadata.codecs
        codec = next((c for c in codecs if c.to_dict().get("name") == CODEC_NAME), None)
        if codec is None:
            raise MoecFormatError(f"{self.path}: array {ARRAY_PATH} is not MoEC-tiled")
        self.spec: TileSpec = codec.spec(self.array.dtype)
        fill = self.array.metadata.fill_value
        self.fill_value = np.asarray(fill, dtype=self.array.dtype).item()
        attrs = dict(self.group.attrs)
        image = attrs.get("ome", {}).get("multiscales", [{}])[0]
        self.axes = "".join(a["name"] for a in image.get("axes", [])).upper() or None
        scale = image.get("datasets", [{}])[0].get("coordinateTransformations", [{}])
        self.spacing = tuple(scale[0]["scale"]) if scale and "scale" in scale[0] else None
        units = [a.get("unit") for a in image.get("axes", []) if a.get("type") == "space"]
        self.unit = units[0] if units else None
        self.attrs = attrs.get("napari_moec", {})

    @property
    def shape(self) -> tuple[int, ...]:
        return self.spec.grid.shape

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.spec.values.dtype)

    # -- lazy arrays -----------------------------------------------------------------------
    def to_dask(self, roi=None, stride=1, *, labels: bool = False):
        """Lazy ``roi[::stride]`` of the decoded volume (or, with ``labels``, of the top-1
        expert ids, distinct across tiles: ``1 + flat_tile * experts + expert``)."""
        import dask.array as da
        from dask.base import tokenize

        spec = self.spec
        slices = parse_roi(roi, spec.grid.shape)
        strides = (stride,) * spec.grid.ndim if isinstance(stride, int) else tuple(stride)
        if len(strides) != spec.grid.ndim or any(not isinstance(s, int) or s < 1 for s in strides):
            raise ConfigError(f"stride must be a positive integer or one per axis: {stride!r}")
        per_axis = []  # per axis: [(tile coordinate, chunk-local indices), ...]
        for s, st, t in zip(slices, strides, spec.grid.tile, strict=True):
            grid = np.arange(s.start, s.stop, st)
            parts = []
            for c in np.unique(grid // t):
                local = grid[grid // t == c] - c * t
                parts.append((int(c), local))
            per_axis.append(parts)
        kind = "labels" if labels else "values"
        name = f"moec-{kind}-" + tokenize(self.path, _stamp(self.path), slices, strides)
        graph = {}
        for key in np.ndindex(*(len(p) for p in per_axis)):
            index = tuple(per_axis[a][k][0] for a, k in enumerate(key))
            axes = [per_axis[a][k][1] for a, k in enumerate(key)]
            graph[(name, *key)] = (_decode_part, self.path, spec, index, axes, self.fill_value,
                                   labels)  # fmt: skip
        chunks = tuple(tuple(len(local) for _, local in parts) for parts in per_axis)
        dtype = spec.label_dtype if labels else self.dtype
        return da.Array(graph, name, chunks, dtype=dtype)

    def decode(self, roi=None, stride=1) -> np.ndarray:
        """``roi[::stride]`` decoded into memory (only the tiles it overlaps), by threads of
        this process: the result lands here anyway (``to_dask`` runs on any scheduler)."""
        return self.to_dask(roi, stride).compute(scheduler="threads")

    def expert_labels(self, roi=None, stride=1) -> np.ndarray:
        """Top-1 expert ids of ``roi[::stride]`` (see :meth:`to_dask`), into memory."""
        return self.to_dask(roi, stride, labels=True).compute(scheduler="threads")

    def pyramid(self, levels: int | None = None, *, labels: bool = False) -> list:
        """Lazy levels at strides 1, 2, 4, ... of the spatial axes (napari's multiscale): by
        default until the level's largest spatial side is under 256 voxels."""
        ndim, out, k = self.spec.grid.ndim, [], 0
        while True:
            s = 2**k
            stride = (1,) * (ndim - 3) + (s,) * 3
            out.append(self.to_dask(None, stride, labels=labels))
            k += 1
            if levels is not None and k >= levels:
                return out
            if levels is None and max(math.ceil(n / s) for n in self.shape[-3:]) < 256 * 2:
                return out

    def chunk(self, index) -> bytes | None:
        """The stored bytes of tile ``index``, or None when it has no chunk (fill value).
        Read afresh each call, so a store being written shows each new tile (napari's lazy
        layers key their cache by the chunk's CRC)."""
        return _chunk(self.path, tuple(int(c) for c in index))

    # -- statistics ------------------------------------------------------------------------
    def chunk_items(self):
        """``(index, bytes)`` of every chunk present."""
        for index in self.spec.grid.indices():
            data = _chunk(self.path, index)
            if data is not None:
                yield index, data

    def info(self, *, tiles: bool = False) -> dict:
        """The ratio the store keeps (every byte counted) and per-tile statistics."""
        spec = self.spec
        original = math.prod(spec.grid.shape) * spec.values.itemsize
        sizes, widths, experts, overhead, kinds, rows = [], [], [], 0, {"network": 0}, []
        correction_bytes = 0
        kinds["constant"] = 0
        for index, data in self.chunk_items():
            tile = parse_tile(spec, data, name=chunk_key(index), expected_index=index)
            kind = "network" if tile.network else "constant"
            kinds[kind] += 1
            payload = len(tile.payload) if tile.network else spec.values.itemsize
            overhead += len(data) - payload - tile.correction_nbytes
            correction_bytes += tile.correction_nbytes
            if tile.network:
                sizes.append(len(data))
                widths.append(tile.model.hidden_features)
                experts.append(tile.model.num_experts)
            if tiles:
                width = tile.model.hidden_features if tile.model else None
                rows.append({"index": list(index), "kind": kind, "bytes": len(data),
                             "width": width})  # fmt: skip
        chunk_bytes, meta_bytes, store_bytes = self._sizes()
        summary = self.attrs.get("summary") or {}
        info = {
            "store": self.path,
            "shape": list(spec.grid.shape),
            "dtype": spec.values.dtype,
            "axes": self.axes,
            "spacing": list(self.spacing) if self.spacing else None,
            "unit": self.unit,
            "tile": list(spec.grid.tile),
            "margin": list(spec.grid.margin),
            "range": [spec.values.vmin, spec.values.vmax],
            "quantization": spec.networks.quant.precision,
            "tiles": spec.grid.num_tiles,
            "network_tiles": kinds["network"],
            "constant_tiles": kinds["constant"],
            "empty_tiles": spec.grid.num_tiles - kinds["network"] - kinds["constant"],
            "original_bytes": original,
            "chunk_bytes": chunk_bytes,
            "metadata_bytes": meta_bytes,
            "store_bytes": store_bytes,
            "ratio": round(original / store_bytes, 2),
            "target_ratio": self.attrs.get("ratio"),
            "psnr": summary.get("psnr"),
            "seconds": summary.get("seconds"),
            "finished": summary != {},
            "tile_overhead_bytes": overhead,
            "tile_overhead_share": round(overhead / chunk_bytes, 4) if chunk_bytes else 0.0,
            "network_tile_bytes": _spread(sizes),
            "network_tile_width": _spread(widths),
            "experts_per_tile": {str(n): experts.count(n) for n in sorted(set(experts))},
            # A quality promise: the bound every voxel keeps (stream 1.2, the codec's "bound"),
            # the largest error measured when written, what the corrections take, the PSNR
            # every tile was made to reach.
            "max_error": spec.values.max_error,
            "max_error_measured": summary.get("max_err"),
            "correction_bytes": correction_bytes,
            "target_psnr": summary.get("target"),
        }
        if tiles:
            info["tile_list"] = rows
        return info

    def _sizes(self) -> tuple[int, int, int]:
        """(chunk bytes, metadata and container bytes, store bytes)."""
        chunks = sum(len(data) for _, data in self.chunk_items())
        if self.path.lower().endswith(".ozx"):
            total = Path(self.path).stat().st_size
            return chunks, total - chunks, total
        # Metadata is every zarr.json; an unfinished run's own files (RUN_STATE, RESULTS_LOG)
        # are not part of the store and disappear when it finishes.
        meta = sum(p.stat().st_size for p in Path(self.path).rglob("zarr.json"))
        return chunks, meta, chunks + meta


def _spread(values: list) -> dict | None:
    if not values:
        return None
    v = np.asarray(values)
    return {"min": int(v.min()), "median": float(np.median(v)), "max": int(v.max()),
            "mean": round(float(v.mean()), 1)}  # fmt: skip


def open_tiled(path) -> TiledStore:
    """Open a tiled store (``.ome.zarr`` folder or ``.ozx``); raises MoecFormatError if it is
    not one.

    Examples
    --------
    >>> store = napari_moec.open_tiled("scan.ome.zarr")          # doctest: +SKIP
    >>> store.to_dask(stride=4)[:, 100].compute()                # doctest: +SKIP
    """
    return TiledStore(path)
