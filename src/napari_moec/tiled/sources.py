"""What a tiled compression reads: any array-like or path, opened without reading its voxels.

Paths (``.npy`` by memory map, TIFF through tifffile's zarr view, zarr / OME-Zarr folders and
``.ozx`` files) become a :class:`SourceRef`, a small picklable description each Dask worker
reopens itself, so a tile task reads only its region from disk. Arrays that live in this process
(numpy, a zarr array in memory) are sliced here and the region travels with the task; dask
arrays are sliced lazily and computed on the cluster.

Checks that need no voxel (existence, kind, 3D/4D, dtype) happen in :func:`open_source`, before
any work; the voxel checks (NaN/Inf) happen in the scan, before any tile is trained.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..volumes import check_axes, check_spacing, check_volume_shape

__all__ = ["Source", "SourceRef", "open_source"]


@dataclass(frozen=True)
class SourceRef:
    """A path-based source a worker can reopen: ``kind`` is "npy", "tiff" or "zarr"."""

    kind: str
    path: str
    array_path: str = ""

    def read(self, slices: tuple[slice, ...]) -> np.ndarray:
        """The voxels ``slices`` as an in-memory array (only those are read)."""
        if self.kind == "npy":
            return read_npy_region(self.path, slices)
        return np.ascontiguousarray(_open(self)[slices])


#: Largest block :func:`read_npy_region` reads at once (rows of one plane); wider planes are
#: read a row at a time.
READ_BLOCK_BYTES = 16 << 20


def read_npy_region(path, slices: tuple[slice, ...]) -> np.ndarray:
    """``np.load(path, mmap_mode="r")[slices]`` without a memory map: the region's rows are
    read into one plane's buffer at a time and copied out.

    Why not the map: copying a region out of a map faults in every page its rows touch, and
    the kernel maps neighbouring pages with each fault; those file-backed pages count in the
    process's resident memory until the map is dropped. Measured: a 320³ float32 region (125
    MB) of a 1024³ ``.npy`` took the resident peak to 1,627 MB, so a Dask worker under a 2 GB
    limit was killed and restarted mid-tile. Read here, the peak is the region plus one
    buffer. C-order files and unit steps only; others fall back to the map."""
    with open(path, "rb") as fh:
        version = np.lib.format.read_magic(fh)
        read_header = (
            np.lib.format.read_array_header_1_0
            if version == (1, 0)
            else np.lib.format.read_array_header_2_0
        )
        shape, fortran, dtype = read_header(fh)
        offset = fh.tell()
        box = [sl.indices(n) for sl, n in zip(slices, shape, strict=True)]
        if fortran or dtype.hasobject or any(step != 1 for _, _, step in box) or len(shape) < 2:
            mapped = np.load(path, mmap_mode="r", allow_pickle=False)
            try:
                return np.array(mapped[slices], order="C")
            finally:
                del mapped
        fh.seek(0, 2)  # the header's shape is checked against the file before it sizes anything
        if fh.tell() < offset + math.prod(shape) * dtype.itemsize:
            raise ConfigError(f"{path}: the file ends before its header's shape {shape}")
        box = [(start, max(start, stop)) for start, stop, _ in box]
        out = np.empty([stop - start for start, stop in box], dtype=dtype)
        if out.size == 0:
            return out
        (y0, y1), (x0, x1) = box[-2], box[-1]
        row = shape[-1] * dtype.itemsize
        # whole rows of the plane's y-range at once, or where that is too large a row's x-range
        block = (y1 - y0) * row <= READ_BLOCK_BYTES
        buf = np.empty((y1 - y0, shape[-1]) if block else (1, x1 - x0), dtype=dtype)
        view = memoryview(buf).cast("B")
        lead = [range(start, stop) for start, stop in box[:-2]]
        for out_index, index in zip(
            np.ndindex(*out.shape[:-2]), itertools.product(*lead), strict=True
        ):
            plane = int(np.ravel_multi_index(index, shape[:-2])) if index else 0
            start = offset + (plane * shape[-2] + y0) * row
            if block:
                fh.seek(start)
                fh.readinto(view)
                out[out_index] = buf[:, x0:x1]
                continue
            for y in range(y1 - y0):
                fh.seek(start + y * row + x0 * dtype.itemsize)
                fh.readinto(view)
                out[(*out_index, y)] = buf[0]
        return out


@lru_cache(maxsize=8)
def _open(ref: SourceRef):
    """The zarr view of a TIFF or zarr source, opened once per worker process."""
    import zarr

    if ref.kind == "tiff":
        import tifffile

        return zarr.open_array(tifffile.imread(ref.path, aszarr=True), mode="r")
    store = ref.path
    if ref.path.lower().endswith(".ozx"):
        store = zarr.storage.ZipStore(ref.path, mode="r")
    return zarr.open_array(store, path=ref.array_path or None, mode="r")


@dataclass(frozen=True)
class Source:
    """An opened source: its geometry, and how tiles read it.

    Exactly one of ``ref`` (path-based: workers read), ``local`` (sliced in this process) or
    ``dask`` (a dask array, computed on the cluster) is set.
    """

    shape: tuple[int, ...]
    dtype: np.dtype
    axes: str
    spacing: tuple[float, ...] | None = None
    unit: str | None = None
    name: str = "volume"
    ref: SourceRef | None = None
    local: object | None = None
    dask: object | None = None

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize

    def read(self, slices: tuple[slice, ...]) -> np.ndarray:
        """Read ``slices`` here (tests, the scan of in-process arrays)."""
        if self.ref is not None:
            return self.ref.read(slices)
        if self.dask is not None:
            return np.asarray(self.dask[slices].compute())
        return np.ascontiguousarray(np.asarray(self.local[slices]))


def open_source(source, *, axes=None, spacing=None, unit=None) -> Source:
    """Describe ``source`` (array-like or path) without reading voxels; raises ConfigError."""
    is_path = isinstance(source, str | Path)
    opened = _open_path(Path(source)) if is_path else _open_array(source)
    shape, dtype = opened.shape, opened.dtype
    check_volume_shape(shape, dtype)
    axes = check_axes(axes if axes is not None else (opened.axes or None), len(shape))
    spacing = check_spacing(spacing if spacing is not None else opened.spacing, len(shape))
    return Source(
        shape=shape,
        dtype=dtype,
        axes=axes,
        spacing=spacing,
        unit=unit if unit is not None else opened.unit,
        name=opened.name,
        ref=opened.ref,
        local=opened.local,
        dask=opened.dask,
    )


def _geometry_of(array, *, shape=None, axes=None, **kwargs) -> Source:
    """A :class:`Source` for ``array``'s shape and dtype (or the given ``shape``)."""
    try:
        dtype = np.dtype(array.dtype)
        shape = tuple(int(n) for n in (array.shape if shape is None else shape))
    except (AttributeError, TypeError):
        raise ConfigError(f"input is not an array: {type(array).__name__}") from None
    if axes is not None:
        try:
            axes = check_axes(axes, len(shape))
        except ConfigError:
            axes = None  # the file's letters do not name a volume's axes: use the default
    return Source(shape=shape, dtype=dtype, axes=axes or "", **kwargs)


def _open_array(array) -> Source:
    if type(array).__module__.startswith("dask"):
        return _geometry_of(array, dask=array)
    try:
        import zarr
    except ImportError:  # pragma: no cover - zarr is a dependency
        zarr = None
    if zarr is not None and isinstance(array, zarr.Array):
        root = getattr(array.store, "root", None)
        if root is not None:  # a LocalStore: workers can reopen it by path
            ref = SourceRef("zarr", str(root), array.path)
            return _geometry_of(array, ref=ref, name=array.path or Path(str(root)).name)
        return _geometry_of(array, local=array)
    if not hasattr(array, "shape") or not hasattr(array, "dtype"):
        try:
            array = np.asarray(array)
        except Exception as exc:
            raise ConfigError(f"input is not an array: {type(array).__name__}") from exc
    return _geometry_of(array, local=array)


def _open_path(path: Path) -> Source:
    if not path.exists():
        raise ConfigError(f"input not found: {path}")
    suffix = path.suffix.lower()
    name = path.name.split(".")[0] or "volume"
    if suffix == ".npy":
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except ValueError as exc:
            raise ConfigError(f"{path.name}: not a readable .npy array ({exc})") from None
        return _geometry_of(array, ref=SourceRef("npy", str(path)), name=name)
    if suffix in (".tif", ".tiff"):
        return _open_tiff(path, name)
    if path.is_dir() or suffix == ".ozx":
        return _open_zarr(path, name)
    raise ConfigError(
        f"{path.name}: unsupported input {suffix!r} "
        "(use .npy, .tif, a zarr / OME-Zarr folder or .ozx)"
    )


def _open_tiff(path: Path, name: str) -> Source:
    import tifffile

    from .._io import _tiff_spacing

    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            shape, dtype, axes = tuple(series.shape), np.dtype(series.dtype), series.axes
            if "S" in axes:
                raise ConfigError(f"{path.name}: RGB/multi-sample TIFF (axes {axes})")
            spacing, unit = _tiff_spacing(tif, len(shape), axes)
    except (tifffile.TiffFileError, ValueError, OSError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"{path.name}: not a readable TIFF ({exc})") from None
    return _geometry_of(
        np.empty(0, dtype), shape=shape, axes=axes.replace("Q", "Z").replace("I", "Z"),
        spacing=spacing, unit=unit, name=name, ref=SourceRef("tiff", str(path)),
    )  # fmt: skip


def _open_zarr(path: Path, name: str) -> Source:
    import zarr

    try:
        store = zarr.storage.ZipStore(path, mode="r") if path.suffix.lower() == ".ozx" else path
        node = zarr.open(store, mode="r")
    except Exception as exc:
        raise ConfigError(f"{path.name}: not a readable zarr / OME-Zarr store ({exc})") from None
    if isinstance(node, zarr.Array):
        return _geometry_of(node, ref=SourceRef("zarr", str(path)), name=name)
    attrs = dict(node.attrs)
    multiscales = attrs.get("ome", attrs).get("multiscales")
    if not multiscales:
        raise ConfigError(f"{path.name}: a zarr group without OME-Zarr multiscales metadata")
    image = multiscales[0]
    dataset = image["datasets"][0]
    array = node[dataset["path"]]
    axes = "".join(a["name"] if isinstance(a, dict) else a for a in image.get("axes", []))
    spacing, unit = None, None
    for transform in dataset.get("coordinateTransformations", []):
        if transform.get("type") == "scale":
            spacing = tuple(transform["scale"])
    for axis in image.get("axes", []):
        if isinstance(axis, dict) and axis.get("type") == "space" and axis.get("unit"):
            unit = axis["unit"]
    return _geometry_of(
        array, axes=axes.upper(), spacing=spacing, unit=unit, name=name,
        ref=SourceRef("zarr", str(path), dataset["path"]),
    )  # fmt: skip
