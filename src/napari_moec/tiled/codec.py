"""``napari_moec.tile``: the zarr v3 codec that turns a tile's bytes into voxels.

Registered through the ``zarr.codecs`` entry point (pyproject.toml), so with napari-moec
installed any zarr-python reader (``zarr.open_array(store)[...]``, ``dask.array.from_zarr``,
napari-ome-zarr) decodes a tiled store with no other help. It is the array's serializer (an
``ArrayBytesCodec``) and implements partial decoding: zarr hands it each chunk's key and the
voxels wanted, so a strided or region read evaluates only those voxels, and a bad chunk's error
names its key. The byte-level spec is :mod:`napari_moec.tiled.tileformat`.

Chunks are written by :func:`napari_moec.compress_tiled` (training a network per tile); zarr
cannot encode arrays into tiles, so assigning to the array raises.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np
from zarr.abc.codec import ArrayBytesCodec, ArrayBytesCodecPartialDecodeMixin
from zarr.core.chunk_grids import RegularChunkGrid
from zarr.core.common import parse_named_configuration

from ..errors import MoecError, MoecFormatError
from .tiledecode import decode_tile
from .tileformat import CODEC_NAME, TileSpec

if TYPE_CHECKING:
    from zarr.core.array_spec import ArraySpec
    from zarr.core.buffer import Buffer, NDBuffer

__all__ = ["MoecTileCodec", "chunk_index_from_key"]

_KEY = re.compile(r"(?:^|/)c((?:[./]\d+)+)$")


def chunk_index_from_key(key: str) -> tuple[int, ...] | None:
    """The grid index in a chunk key such as ``0/c/1/2/3`` (None when it has another form)."""
    match = _KEY.search(key)
    if match is None:
        return None
    return tuple(int(part) for part in re.split(r"[./]", match.group(1))[1:])


def _chunk_name(byte_getter) -> str:
    """The chunk's key, prefixed by its store's location when known (for error messages)."""
    key = str(getattr(byte_getter, "path", "?"))
    store = getattr(byte_getter, "store", None)
    root = getattr(store, "root", None) or getattr(store, "path", None)
    return f"{root}/{key}" if root else key


@lru_cache(maxsize=32)
def _spec(config_json: str, dtype: str) -> TileSpec:
    return TileSpec.from_json(json.loads(config_json), dtype)


def _axis_indices(selector, n: int) -> np.ndarray:
    """Sorted, unique chunk-local indices an axis selector touches."""
    if isinstance(selector, slice):
        return np.arange(n)[selector]
    if isinstance(selector, int | np.integer):
        return np.array([int(selector)])
    array = np.asarray(selector)
    if array.dtype == bool:
        array = np.nonzero(array.ravel())[0]
    return np.unique(array.ravel()).astype(np.int64)


def _on_grid(selector, unique: np.ndarray):
    """``selector`` re-expressed on the decoded grid of ``unique`` indices (same numpy result)."""
    if isinstance(selector, slice):
        return slice(None)
    if isinstance(selector, int | np.integer):
        return 0
    array = np.asarray(selector)
    if array.dtype == bool:
        array = np.nonzero(array)[0]
    return np.searchsorted(unique, array)


@dataclass(frozen=True)
class MoecTileCodec(ArrayBytesCodec, ArrayBytesCodecPartialDecodeMixin):
    """Serializer of MoEC tiles; ``configuration`` is the spec's JSON (:class:`TileSpec`)."""

    is_fixed_size = False
    config_json: str

    def __init__(self, *, configuration: dict[str, Any] | str) -> None:
        if not isinstance(configuration, str):
            configuration = json.dumps(configuration, sort_keys=True, separators=(",", ":"))
        object.__setattr__(self, "config_json", configuration)

    @classmethod
    def from_spec(cls, spec: TileSpec) -> MoecTileCodec:
        return cls(configuration=spec.to_json())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MoecTileCodec:
        _, configuration = parse_named_configuration(data, CODEC_NAME)
        return cls(configuration=configuration)

    def to_dict(self) -> dict[str, Any]:
        return {"name": CODEC_NAME, "configuration": json.loads(self.config_json)}

    def spec(self, dtype) -> TileSpec:
        """The validated spec for an array of ``dtype`` (raises MoecFormatError)."""
        return _spec(self.config_json, np.dtype(dtype).name)

    # -- zarr hooks ----------------------------------------------------------------------
    def validate(self, *, shape, dtype, chunk_grid) -> None:
        spec = self.spec(dtype.to_native_dtype())
        if tuple(shape) != spec.grid.shape:
            raise MoecFormatError(
                f"{CODEC_NAME} shape {spec.grid.shape} is not the array's {shape}"
            )
        if not isinstance(chunk_grid, RegularChunkGrid) or chunk_grid.chunk_shape != spec.grid.tile:
            raise MoecFormatError(f"{CODEC_NAME} needs regular chunks of its tile {spec.grid.tile}")

    def compute_encoded_size(self, input_byte_length: int, chunk_spec: ArraySpec) -> int:
        raise NotImplementedError  # variable size, like every compressor

    async def _decode_single(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> NDBuffer:
        full = tuple(slice(0, n) for n in chunk_spec.shape)
        data = chunk_bytes.to_bytes()
        values = await asyncio.to_thread(self._decode, data, full, chunk_spec, "?")
        return chunk_spec.prototype.nd_buffer.from_numpy_array(values)

    async def _decode_partial_single(
        self, byte_getter, selection, chunk_spec: ArraySpec
    ) -> NDBuffer | None:
        chunk_bytes = await byte_getter.get(prototype=chunk_spec.prototype)
        if chunk_bytes is None:
            return None
        data = chunk_bytes.to_bytes()
        name = _chunk_name(byte_getter)
        values = await asyncio.to_thread(self._decode, data, selection, chunk_spec, name)
        return chunk_spec.prototype.nd_buffer.from_numpy_array(values)

    def _decode(self, data: bytes, selection, chunk_spec: ArraySpec, key: str) -> np.ndarray:
        native = chunk_spec.dtype.to_native_dtype()
        spec = self.spec(native)
        if not isinstance(selection, tuple):
            selection = (selection,)
        if len(selection) != len(chunk_spec.shape):
            raise MoecFormatError(f"chunk {key}: selection {selection} does not fit the tile")
        unique = [_axis_indices(s, n) for s, n in zip(selection, chunk_spec.shape, strict=True)]
        fill = chunk_spec.fill_value
        try:
            grid = decode_tile(
                spec,
                data,
                unique,
                fill_value=0 if fill is None else fill,
                name=key,
                expected_index=chunk_index_from_key(key),
            )
        except MoecError:
            raise
        except (ValueError, RuntimeError, OverflowError, IndexError) as exc:  # defensive
            raise MoecFormatError(f"chunk {key}: undecodable tile ({exc})") from exc
        picked = grid[tuple(_on_grid(s, u) for s, u in zip(selection, unique, strict=True))]
        return np.ascontiguousarray(picked, dtype=native)

    async def _encode_single(self, chunk_array: NDBuffer, chunk_spec: ArraySpec) -> Buffer | None:
        raise MoecFormatError(
            "MoEC tiles are written by napari_moec.compress_tiled (a network is trained per "
            "tile); a tiled store cannot be assigned to through zarr"
        )
