"""The MoEC tile stream, version 1.0: the bytes of one chunk of a tiled store. This docstring is
the byte-level specification; it extends the ``.moec`` spec (``napari_moec.format``).

A tiled store is an OME-Zarr image (NGFF 0.5, zarr v3) whose array's only codec is
``{"name": "napari_moec.tile", "configuration": {...}}`` (the serializer, an ArrayBytesCodec).
What every tile shares is stated once, in that configuration (JSON)::

    "version"  "1.0"   tile stream version (an unknown major is rejected)
    "shape"    [N...]  the array's shape (3 or 4 axes), as in the array metadata
    "tile"     [T...]  the chunk shape (one tile per chunk)
    "margin"   [M...]  voxels of context each tile's network was trained on beyond its faces
    "range"    [min, max]  intensities of the original volume (min < max)
    "norm"     [lo, hi]    training range the intensities were mapped to (lo < hi)
    "model"    [top_k, expert_layers, w0, w0_first]; w0_first is null: from the width (below)
    "quant"    [precision, per_channel 0|1, entropy 0|1]   as the .moec header's "q"
    "experts"  the largest num_experts of any tile (the stride of label ids, below)

The data type is the array's ``data_type`` (uint8, uint16, int16 or float32).

Geometry. Tile ``c`` (its zarr chunk grid index) holds voxels ``c*T .. min((c+1)*T, N)`` per axis.
Its network was trained on the *region* ``max(0, c*T - M) .. min(N, (c+1)*T + M)`` (the tile plus
its margin, clipped to the volume), with region voxel ``i`` of ``R`` at coordinate
``-1 + 2 i / (R - 1)`` (0 when ``R == 1``), exactly like a ``.moec`` file of the region's shape. A
tile's voxels are a region of interest of that network; the chunk's voxels beyond the array (edge
chunks) are the array's fill value.

Chunk bytes (integers little-endian; varint = unsigned LEB128, at most 5 bytes)::

    offset  size  field
    0       1     kind: 1 = constant tile, 2 = network tile (other values are invalid)
    1       k     the chunk grid index, one varint per axis (checked against the chunk's key)
    kind 1:
            s     the tile's value, one element of the data type (s = itemsize)
    kind 2:
            v     varint H = hidden_features, 1..4096
            v     varint n = num_experts, 1..min(64, "experts")
            P     payload: the weights exactly as a .moec payload (``format.py``, "Payload") of
                  the ModelConfig (in_features = len(shape), hidden_features H, num_experts n,
                  top_k = min(top_k, n), expert_layers, gate_hidden = max(2, H // 2),
                  out_features 1, w0, w0_first = the configuration's, or when null
                  ``min(30, max(5, round(0.75 H)))``); its length is what lies between the
                  varints and the CRC, checked against the model as in a .moec file
    end-4   4     u32 CRC-32 (zlib.crc32) of every byte before it

Chunks that are absent hold the array's fill value (zarr's rule): tiles whose every voxel equals
it cost no byte. Decoded values are ``(y - lo) / (hi - lo) * (max - min) + min`` clipped to
``[min, max]`` and rounded for integer types. Expert labels (top-1 expert ``e`` of tile ``c``,
``c`` flattened in C order) are ``1 + flat(c) * experts + e``; constant and absent tiles are 0.

Per-tile overhead (what a tile costs besides its weights): 1 kind byte, the index varints (one
byte per axis below 128 tiles an axis), 2 width/experts bytes (H < 128), 4 CRC bytes: 10 bytes
for a 3D network tile of a grid under 128 tiles per axis. Reading checks, in order: size,
CRC, kind, index (range and key), H and n, then the payload against the model
(``format.unpack_payload``); every failure raises MoecFormatError naming the chunk, and nothing
is allocated from a size that was not checked.
"""

from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass
from itertools import product

import numpy as np

from .. import varint
from ..config import ModelConfig, QuantConfig
from ..errors import ConfigError, MoecFormatError
from ..volumes import SUPPORTED_DTYPES

__all__ = [
    "CODEC_NAME",
    "KIND_CONSTANT",
    "KIND_NETWORK",
    "MAX_TILE_BYTES",
    "TILE_VERSION",
    "Tile",
    "TileGrid",
    "TileNetworks",
    "TileSpec",
    "TileValues",
    "encode_constant_tile",
    "encode_network_tile",
    "label_dtype",
    "network_overhead",
    "parse_tile",
    "tile_w0_first",
]

CODEC_NAME = "napari_moec.tile"
TILE_VERSION = (1, 0)
KIND_CONSTANT = 1
KIND_NETWORK = 2
#: Largest chunk a reader accepts (a 2^26-parameter fp32 network is 256 MiB).
MAX_TILE_BYTES = (1 << 28) + 64
_CRC = struct.Struct("<I")


def label_dtype(num_tiles: int, experts: int) -> np.dtype:
    """uint32 label ids, or uint64 when ``tiles * experts`` does not fit 32 bits (two numbers,
    not a spec: the widget needs the dtype before the store's spec exists)."""
    return np.dtype(np.uint32 if num_tiles * experts < 2**32 - 1 else np.uint64)


def tile_w0_first(hidden: int) -> float:
    """The spec's first-layer ω0 for a tile of width ``hidden`` (the core's rule, frozen here so
    the stream does not depend on how the core sizes networks later)."""
    return float(min(30, max(5, round(0.75 * hidden))))


@dataclass(frozen=True)
class TileGrid:
    """Where the tiles are: the volume's shape cut into tiles, each trained with a margin.

    Owns every index and slice rule of the spec's "Geometry" paragraph; knows nothing of
    values or networks, so a run can walk its tiles before the volume's range is known."""

    shape: tuple[int, ...]
    tile: tuple[int, ...]
    margin: tuple[int, ...]

    def __post_init__(self) -> None:
        ndim = len(self.shape)
        if ndim not in (3, 4) or len(self.tile) != ndim or len(self.margin) != ndim:
            raise ConfigError(f"tile {self.tile} and margin {self.margin} must match {self.shape}")
        if any(n < 1 for n in self.shape) or any(t < 1 for t in self.tile):
            raise ConfigError(f"invalid shape {self.shape} or tile {self.tile}")
        if any(m < 0 for m in self.margin):
            raise ConfigError(f"margin must be >= 0, got {self.margin}")

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def counts(self) -> tuple[int, ...]:
        """Tiles per axis (the zarr chunk grid)."""
        return tuple(-(-n // t) for n, t in zip(self.shape, self.tile, strict=True))

    @property
    def num_tiles(self) -> int:
        return math.prod(self.counts)

    def indices(self):
        """Every tile index, in C order."""
        return product(*(range(g) for g in self.counts))

    def flat(self, index: tuple[int, ...]) -> int:
        """The C-order position of tile ``index`` (label ids are built from it)."""
        return int(np.ravel_multi_index(index, self.counts))

    def tile_slices(self, index) -> tuple[slice, ...]:
        """The voxels of tile ``index`` within the volume."""
        return tuple(
            slice(c * t, min((c + 1) * t, n))
            for c, t, n in zip(index, self.tile, self.shape, strict=True)
        )

    def region_slices(self, index) -> tuple[slice, ...]:
        """The voxels its network was trained on: the tile plus its margin, clipped."""
        return tuple(
            slice(max(0, s.start - m), min(n, s.stop + m))
            for s, m, n in zip(self.tile_slices(index), self.margin, self.shape, strict=True)
        )

    def tile_in_region(self, index) -> tuple[slice, ...]:
        """The tile's voxels as a region of interest of its region."""
        return tuple(
            slice(t.start - r.start, t.stop - r.start)
            for t, r in zip(self.tile_slices(index), self.region_slices(index), strict=True)
        )

    def tile_voxels(self, index) -> int:
        return math.prod(s.stop - s.start for s in self.tile_slices(index))


@dataclass(frozen=True)
class TileValues:
    """What a voxel is: the array's data type, the original intensity range and the training
    range it was mapped to (decoding maps back and clips to ``[vmin, vmax]``)."""

    dtype: str
    vmin: float
    vmax: float
    norm: tuple[float, float] = (-1.0, 1.0)

    def __post_init__(self) -> None:
        if self.dtype not in SUPPORTED_DTYPES:
            raise ConfigError(f"unsupported dtype {self.dtype!r}")
        if not (self.vmin < self.vmax and self.norm[0] < self.norm[1]):
            raise ConfigError("empty intensity or normalisation range")

    @property
    def itemsize(self) -> int:
        return np.dtype(self.dtype).itemsize


@dataclass(frozen=True)
class TileNetworks:
    """What every network tile shares: how its weights are quantized and the SIREN knobs a
    tile's width and experts do not decide. ``experts`` is the store's largest expert count
    (the stride of label ids), not each tile's."""

    quant: QuantConfig
    top_k: int = 1
    expert_layers: int = 3
    w0: float = 30.0
    w0_first: float | None = None
    experts: int = 2

    def __post_init__(self) -> None:
        if not 1 <= self.experts <= 64 or not 1 <= self.top_k <= 2:
            raise ConfigError(f"invalid experts {self.experts} or top_k {self.top_k}")

    def model_config(self, ndim: int, hidden: int, experts: int) -> ModelConfig:
        """The network of a tile of ``ndim`` axes, width ``hidden``, ``experts`` experts (the
        spec's rule)."""
        return ModelConfig(
            in_features=ndim,
            hidden_features=hidden,
            num_experts=experts,
            top_k=min(self.top_k, experts),
            expert_layers=self.expert_layers,
            gate_hidden=max(2, hidden // 2),
            out_features=1,
            w0=self.w0,
            w0_first=tile_w0_first(hidden) if self.w0_first is None else self.w0_first,
        )


@dataclass(frozen=True)
class TileSpec:
    """What all tiles of a store share (the codec's configuration plus the array's dtype), as
    three owners: where the tiles are (``grid``), what a voxel is (``values``) and what a
    network tile is (``networks``). Only rules that need two of them live here."""

    grid: TileGrid
    values: TileValues
    networks: TileNetworks

    def model_config(self, hidden: int, experts: int) -> ModelConfig:
        """The network of a tile of width ``hidden`` with ``experts`` experts (spec rule)."""
        return self.networks.model_config(self.grid.ndim, hidden, experts)

    @property
    def label_dtype(self) -> np.dtype:
        """The dtype of the store's expert label ids (``1 + flat(c) * experts + e``)."""
        return label_dtype(self.grid.num_tiles, self.networks.experts)

    # -- JSON ----------------------------------------------------------------------------
    def to_json(self) -> dict:
        """The codec configuration (dtype is the array's, not repeated here)."""
        grid, values, nets = self.grid, self.values, self.networks
        return {
            "version": f"{TILE_VERSION[0]}.{TILE_VERSION[1]}",
            "shape": list(grid.shape),
            "tile": list(grid.tile),
            "margin": list(grid.margin),
            "range": [_num(values.vmin), _num(values.vmax)],
            "norm": [_num(values.norm[0]), _num(values.norm[1])],
            "model": [nets.top_k, nets.expert_layers, _num(nets.w0), _opt(nets.w0_first)],
            "quant": [nets.quant.precision, int(nets.quant.per_channel), int(nets.quant.entropy)],
            "experts": nets.experts,
        }

    @classmethod
    def from_json(cls, doc: object, dtype: str) -> TileSpec:
        """Validate a codec configuration; raises MoecFormatError naming the bad field."""
        try:
            return _spec_from_json(doc, dtype)
        except ConfigError as exc:
            raise MoecFormatError(f"invalid {CODEC_NAME} configuration: {exc}") from None
        except (TypeError, ValueError, KeyError, OverflowError) as exc:
            raise MoecFormatError(f"invalid {CODEC_NAME} configuration: {exc!r}") from None


def _num(x: float) -> float | int:
    x = float(x)
    return int(x) if x.is_integer() and abs(x) < 2**53 else x


def _opt(x: float | None):
    return None if x is None else _num(x)


def _int_list(value, ndim, lo, what) -> tuple[int, ...]:
    if not isinstance(value, list) or len(value) != ndim:
        raise MoecFormatError(f"{CODEC_NAME} {what} must be a list of {ndim} integers")
    for v in value:
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= 1 << 40:
            raise MoecFormatError(f"{CODEC_NAME} {what} has an invalid entry {v!r}")
    return tuple(value)


def _number(v, what) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise MoecFormatError(f"{CODEC_NAME} {what} has an invalid entry {v!r}")
    return float(v)


def _spec_from_json(doc, dtype: str) -> TileSpec:
    if not isinstance(doc, dict):
        raise MoecFormatError(f"{CODEC_NAME} configuration must be a JSON object")
    known = {"version", "shape", "tile", "margin", "range", "norm", "model", "quant", "experts"}
    if set(doc) != known:
        raise MoecFormatError(
            f"{CODEC_NAME} configuration keys {sorted(doc)} differ from {sorted(known)}"
        )
    version = doc["version"]
    if not isinstance(version, str) or version.split(".")[0] != str(TILE_VERSION[0]):
        raise MoecFormatError(f"{CODEC_NAME} version {version!r} is not supported (reads 1.x)")
    shape = doc["shape"]
    if not isinstance(shape, list) or len(shape) not in (3, 4):
        raise MoecFormatError(f"{CODEC_NAME} shape must list 3 or 4 sizes, got {shape!r}")
    ndim = len(shape)
    shape = _int_list(shape, ndim, 1, "shape")
    tile = _int_list(doc["tile"], ndim, 1, "tile")
    margin = _int_list(doc["margin"], ndim, 0, "margin")
    rng, norm = doc["range"], doc["norm"]
    if not (isinstance(rng, list) and len(rng) == 2 and isinstance(norm, list) and len(norm) == 2):
        raise MoecFormatError(f"{CODEC_NAME} range and norm must be [lo, hi] pairs")
    model = doc["model"]
    if not isinstance(model, list) or len(model) != 4:
        raise MoecFormatError(f"{CODEC_NAME} model must be [top_k, layers, w0, w0_first]")
    top_k, layers = _int_list(model[:2], 2, 1, "model")
    w0_first = None if model[3] is None else _number(model[3], "model")
    q = doc["quant"]
    if not (
        isinstance(q, list)
        and len(q) == 3
        and isinstance(q[0], str)
        and all(type(b) is int and b in (0, 1) for b in q[1:])
    ):
        raise MoecFormatError(f"{CODEC_NAME} invalid quantization {q!r}")
    experts = doc["experts"]
    if type(experts) is not int:
        raise MoecFormatError(f"{CODEC_NAME} experts must be an integer, got {experts!r}")
    spec = TileSpec(
        TileGrid(shape, tile, margin),
        TileValues(
            dtype,
            _number(rng[0], "range"),
            _number(rng[1], "range"),
            (_number(norm[0], "norm"), _number(norm[1], "norm")),
        ),
        TileNetworks(
            QuantConfig(q[0], bool(q[1]), bool(q[2])),
            top_k=top_k,
            expert_layers=layers,
            w0=_number(model[2], "model"),
            w0_first=w0_first,
            experts=experts,
        ),
    )
    spec.model_config(1, 1)  # validates layers, w0 and w0_first through ModelConfig
    return spec


# -- writing -------------------------------------------------------------------------------
def _finish(body: bytes) -> bytes:
    return body + _CRC.pack(zlib.crc32(body))


def _index_bytes(spec: TileSpec, index) -> bytes:
    index = tuple(int(c) for c in index)
    counts = spec.grid.counts
    if len(index) != len(counts) or any(not 0 <= c < g for c, g in zip(index, counts, strict=True)):
        raise ConfigError(f"tile index {index} is outside the grid {counts}")
    return b"".join(varint.encode(c) for c in index)


def encode_constant_tile(spec: TileSpec, index, value) -> bytes:
    """The chunk of a tile whose every voxel is ``value``."""
    raw = np.asarray(value, dtype=np.dtype(spec.values.dtype).newbyteorder("<")).tobytes()
    return _finish(bytes([KIND_CONSTANT]) + _index_bytes(spec, index) + raw)


def encode_network_tile(spec: TileSpec, index, model: ModelConfig, payload: bytes) -> bytes:
    """The chunk of a network tile: ``payload`` packed (``format.pack_payload``) for ``model``,
    which must be ``spec.model_config(H, n)``."""
    expected = spec.model_config(model.hidden_features, model.num_experts)
    if model != expected:
        raise ConfigError(f"tile network {model} is not the spec's {expected}")
    if model.num_experts > spec.networks.experts:
        raise ConfigError(f"{model.num_experts} experts exceed the store's {spec.networks.experts}")
    head = (
        bytes([KIND_NETWORK])
        + _index_bytes(spec, index)
        + varint.encode(model.hidden_features)
        + varint.encode(model.num_experts)
    )
    return _finish(head + bytes(payload))


def network_overhead(spec: TileSpec, index, hidden: int, experts: int) -> int:
    """Bytes of a network tile besides its payload (kind, index, width, experts, CRC)."""
    return (
        1
        + len(_index_bytes(spec, index))
        + len(varint.encode(hidden))
        + len(varint.encode(experts))
        + 4
    )


# -- reading -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Tile:
    """One parsed chunk: a constant (``value``) or a network (``model`` + ``payload``)."""

    kind: int
    index: tuple[int, ...]
    nbytes: int
    value: float | int | None = None
    model: ModelConfig | None = None
    payload: bytes = b""


def parse_tile(spec: TileSpec, data: bytes, *, name: str = "?", expected_index=None) -> Tile:
    """Validate one chunk's bytes (the payload only by length; ``unpack_payload`` decodes it).

    ``name`` (the chunk's key) appears in every error; ``expected_index`` (from the key) must be
    the index the chunk holds.
    """
    data = bytes(data)
    n = len(data)
    if n > MAX_TILE_BYTES:
        raise MoecFormatError(f"chunk {name}: {n} bytes is too large for a tile")
    if n < 1 + spec.grid.ndim + _CRC.size:
        raise MoecFormatError(f"chunk {name}: {n} bytes is too short for a tile (truncated?)")
    (crc,) = _CRC.unpack_from(data, n - _CRC.size)
    if zlib.crc32(data[: -_CRC.size]) != crc:
        raise MoecFormatError(
            f"chunk {name}: checksum mismatch, the tile is corrupted or truncated"
        )
    end = n - _CRC.size
    kind = data[0]
    if kind not in (KIND_CONSTANT, KIND_NETWORK):
        raise MoecFormatError(f"chunk {name}: unknown tile kind {kind}")
    pos, index = 1, []
    counts = spec.grid.counts
    for axis, g in enumerate(counts):
        c, pos = varint.decode(data, pos, end, f"index of axis {axis}", f"chunk {name}: ")
        if c >= g:
            raise MoecFormatError(f"chunk {name}: tile index {c} outside the grid {counts}")
        index.append(c)
    index = tuple(index)
    if expected_index is not None and index != tuple(expected_index):
        raise MoecFormatError(f"chunk {name}: holds tile {index}, not {tuple(expected_index)}")
    if kind == KIND_CONSTANT:
        itemsize = spec.values.itemsize
        if end - pos != itemsize:
            raise MoecFormatError(
                f"chunk {name}: constant tile has {end - pos} value bytes, not {itemsize}"
            )
        value = np.frombuffer(data, np.dtype(spec.values.dtype).newbyteorder("<"), 1, pos)[0]
        if not np.isfinite(value):
            raise MoecFormatError(f"chunk {name}: constant tile value {value} is not finite")
        return Tile(kind, index, n, value=value.item())
    hidden, pos = varint.decode(data, pos, end, "width", f"chunk {name}: ")
    experts, pos = varint.decode(data, pos, end, "number of experts", f"chunk {name}: ")
    if not 1 <= hidden <= 4096 or not 1 <= experts <= min(64, spec.networks.experts):
        raise MoecFormatError(f"chunk {name}: invalid network width {hidden} or {experts} experts")
    try:
        model = spec.model_config(hidden, experts)
    except ConfigError as exc:
        raise MoecFormatError(f"chunk {name}: {exc}") from None
    return Tile(kind, index, n, model=model, payload=data[pos:end])
