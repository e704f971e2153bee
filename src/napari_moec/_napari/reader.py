"""npe2 readers: ``.moec`` files, and tiled MoEC stores (OME-Zarr folders, ``.ozx`` files).

napari asks every reader whose filename pattern matches; returning None lets another plugin try,
so we only claim what is ours: ``.moec`` files that start with our magic bytes, and zarr stores
whose array uses our tile codec (any other ``.zarr`` is left to napari-ome-zarr). A file with our
magic that is broken raises :class:`~napari_moec.errors.MoecFormatError`, which napari shows:
it *is* ours, and saying why it cannot be read is more useful than silence.

Tiled stores, and ``.moec`` volumes above :data:`LAZY_VOXELS`, open lazily: multiscale layers
that decode only what napari shows (:mod:`._lazy`), so opening costs milliseconds and memory
stays bounded whatever the volume's size. Smaller ``.moec`` files are decoded whole, as before.
"""

from __future__ import annotations

import math
import os
import zipfile
from collections.abc import Callable
from pathlib import Path

from ..api import load
from ..compressed import Compressed
from ..format import MAGIC
from .layers import lazy_layer_data, moec_metadata, result_layer_data

__all__ = [
    "LAZY_VOXELS",
    "napari_get_reader",
    "napari_get_tiled_reader",
    "read_moec",
    "read_tiled",
    "store_name",
]

#: A single ``.moec`` volume with more voxels than this opens lazily (256³: 32 MB of uint16,
#: ~10 s to decode whole on one CPU core).
LAZY_VOXELS = 256**3
_CODEC_NAME = b"napari_moec.tile"  # tiled.tileformat.CODEC_NAME, without importing the package


def _is_moec(path: str | os.PathLike) -> bool:
    path = Path(path)
    if path.suffix.lower() != ".moec" or not path.is_file():
        return False
    try:
        with path.open("rb") as fh:
            return fh.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


def _is_tiled(path: str | os.PathLike) -> bool:
    """A store folder or ``.ozx`` whose array ``0`` uses our tile codec."""
    path = Path(path)
    try:
        if path.suffix.lower() == ".ozx":
            if not zipfile.is_zipfile(path):
                return False
            with zipfile.ZipFile(path) as zf:
                return _CODEC_NAME in zf.read("0/zarr.json")
        meta = path / "0" / "zarr.json"
        return meta.is_file() and _CODEC_NAME in meta.read_bytes()
    except (OSError, KeyError, zipfile.BadZipFile):
        return False


def _paths(path) -> list:
    return list(path) if isinstance(path, list | tuple) else [path]


def napari_get_reader(path: str | os.PathLike | list) -> Callable | None:
    """Return :func:`reader_function` if ``path`` is a ``.moec`` file, else None.

    Parameters
    ----------
    path
        One path, or a list whose paths must all be ``.moec`` files.
    """
    paths = _paths(path)
    if not paths or not all(_is_moec(p) for p in paths):
        return None
    return reader_function


def napari_get_tiled_reader(path: str | os.PathLike | list) -> Callable | None:
    """Return :func:`tiled_reader_function` if every path is a tiled MoEC store, else None."""
    paths = _paths(path)
    if not paths or not all(_is_tiled(p) for p in paths):
        return None
    return tiled_reader_function


def read_moec(path: str | os.PathLike, *, lazy: bool | None = None) -> tuple[Compressed, list]:
    """Open one ``.moec`` file: the :class:`Compressed` and its layer data.

    The dock widget's Load… calls this too, so both routes give identical layers.

    Parameters
    ----------
    lazy
        Decode on demand (multiscale layers) rather than now; None: when the volume has more
        than :data:`LAZY_VOXELS` voxels.

    Raises
    ------
    MoecFormatError
        The file is not a valid ``.moec`` file (truncated, corrupted, unknown version).
    """
    compressed = load(path)
    name = Path(path).name.removesuffix(".moec")
    header = compressed.header
    if lazy is None:
        lazy = math.prod(header.shape) > LAZY_VOXELS
    if not lazy:
        return compressed, result_layer_data(compressed, name, path=str(path))
    from .lazy_blocks import MoecBlocks

    return compressed, lazy_layer_data(
        MoecBlocks(compressed), name, spacing=header.spacing, unit=header.unit,
        contrast_limits=(header.vmin, header.vmax), metadata=moec_metadata(compressed, path),
    )  # fmt: skip


def store_name(path: str | os.PathLike) -> str:
    """``organ`` for ``organ.ome.zarr``, ``organ.zarr`` or ``organ.ozx``."""
    name = Path(path).name
    for suffix in (".ome.zarr", ".zarr", ".ome.ozx", ".ozx"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)] or name
    return name


def tiled_metadata(store) -> dict:
    """What napari-moec knows of a store without reading its chunks (``moec info`` reads them
    all; ``store.info()`` gives that on demand)."""
    summary = store.attrs.get("summary") or {}
    spec = store.spec
    return {
        "moec_path": store.path,
        "moec_ratio": store.attrs.get("ratio"),
        "moec_psnr": summary.get("psnr"),
        "moec_ssim": None,
        "moec_experts": spec.networks.experts,
        "moec_tile": list(spec.grid.tile),
        "moec_finished": bool(summary),
    }


def read_tiled(path: str | os.PathLike) -> tuple[object, list[tuple]]:
    """Open a tiled store lazily: the :class:`~napari_moec.tiled.reader.TiledStore` and its
    multiscale Image and Labels layer data (nothing decoded yet)."""
    from ..tiled.reader import open_tiled
    from .lazy_blocks import TiledBlocks

    store = open_tiled(path)
    spec = store.spec
    return store, lazy_layer_data(
        TiledBlocks(store), store_name(path), spacing=store.spacing, unit=store.unit,
        contrast_limits=(spec.values.vmin, spec.values.vmax), metadata=tiled_metadata(store),
    )  # fmt: skip


def reader_function(path: str | os.PathLike | list) -> list[tuple]:
    """Read one or more ``.moec`` files into LayerData tuples (Image + Labels for each)."""
    layers: list[tuple] = []
    for p in _paths(path):
        layers.extend(read_moec(p)[1])
    return layers


def tiled_reader_function(path: str | os.PathLike | list) -> list[tuple]:
    """Read one or more tiled stores into lazy LayerData tuples (Image + Labels for each)."""
    layers: list[tuple] = []
    for p in _paths(path):
        layers.extend(read_tiled(p)[1])
    return layers
