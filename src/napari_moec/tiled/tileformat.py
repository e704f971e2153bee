"""The MoEC tile stream, version 1.2: the bytes of one chunk of a tiled store. This docstring is
the byte-level specification; it extends the ``.moec`` spec (``napari_moec.format``).

Version 1.1 adds tiles of any registered model family (``napari_moec.families``): the
configuration's optional ``"family"`` key and the chunk kind 3. A store of SIREN tiles omits
the key and writes ``"version": "1.0"``, so its metadata and chunks are byte for byte what 1.0
wrote; a store of another family writes ``"1.1"``.

Version 1.2 adds a guaranteed maximum error (``--max-error``): the configuration's optional
``"bound"`` key and, in such a store only, a correction stream in every network tile (kind 2 or
3), after its model fields and before its payload. A store without a bound omits both and
writes ``"1.0"``/``"1.1"`` as before, byte for byte (tests/data/golden_tiled); a store with one
writes ``"1.2"`` (a reader of 1.0/1.1 rejects its unknown key instead of decoding it without
the correction).

A tiled store is an OME-Zarr image (NGFF 0.5, zarr v3) whose array's only codec is
``{"name": "napari_moec.tile", "configuration": {...}}`` (the serializer, an ArrayBytesCodec).
What every tile shares is stated once, in that configuration (JSON)::

    "version"  "1.0"   tile stream version (an unknown major is rejected)
    "shape"    [N...]  the array's shape (3 or 4 axes), as in the array metadata
    "tile"     [T...]  the chunk shape (one tile per chunk)
    "margin"   [M...]  voxels of context each tile's network was trained on beyond its faces
    "range"    [min, max]  intensities of the original volume (min < max)
    "norm"     [lo, hi]    training range the intensities were mapped to (lo < hi)
    "family"   (1.1, optional) the model family of every network tile, e.g. "grid"; absent
               means "siren" (and is never written for SIREN)
    "model"    SIREN: [top_k, expert_layers, w0, w0_first]; w0_first is null: from the width
               (below). Other families: null (each tile states its own model, kind 3)
    "quant"    [precision, per_channel 0|1, entropy 0|1]   as the .moec header's "q"
    "experts"  the largest num_experts of any tile (the stride of label ids, below)
    "bound"    (1.2, optional) E > 0, finite: every decoded voxel is within E of the original
               (data units); absent means no promise (and is never written without one)

The data type is the array's ``data_type`` (uint8, uint16, int16 or float32).

Geometry. Tile ``c`` (its zarr chunk grid index) holds voxels ``c*T .. min((c+1)*T, N)`` per axis.
Its network was trained on the *region* ``max(0, c*T - M) .. min(N, (c+1)*T + M)`` (the tile plus
its margin, clipped to the volume), with region voxel ``i`` of ``R`` at coordinate
``-1 + 2 i / (R - 1)`` (0 when ``R == 1``), exactly like a ``.moec`` file of the region's shape. A
tile's voxels are a region of interest of that network; the chunk's voxels beyond the array (edge
chunks) are the array's fill value.

Chunk bytes (integers little-endian; varint = unsigned LEB128, at most 5 bytes)::

    offset  size  field
    0       1     kind: 1 = constant tile, 2 = SIREN network tile, 3 = family network tile;
                  2 only in a SIREN store, 3 only in a store with a "family" (others invalid)
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
    kind 3:
            v     varint k = number of model fields, 1..32
            k*v   k varints, each < 2^20: the family's model config as its header ``"m"`` list
                  of integers (``PayloadCodec.config_to_json``; grid: the 9 integers of
                  ``families/grid/config.FIELDS``), read back with ``config_from_json`` for the
                  tile's *region* shape (the family checks every field's range)
            P     payload: the family's payload for that config (``PayloadCodec``); its length
                  is what lies between the fields and the CRC, checked by the family's
                  ``unpack_payload`` before anything is sized from it
    kinds 2 and 3 in a store with a "bound" (1.2), between the model fields and P:
            v     varint C = correction stream length, 1 .. the bytes left before the CRC
            C     the tile's correction stream (``napari_moec.correction_codec``, any of its
                  versions) for the *tile's* shape (edge tiles: their voxels inside the array)
                  and the array's dtype; its bound must equal "bound" and its clip range
                  "range" (so every tile shares one quantizer step and reader margin)
    end-4   4     u32 CRC-32 (zlib.crc32) of every byte before it

Chunks that are absent hold the array's fill value (zarr's rule): tiles whose every voxel equals
it cost no byte. Decoded values are ``(y - lo) / (hi - lo) * (max - min) + min`` clipped to
``[min, max]`` and rounded for integer types. With a correction stream, that unclipped,
unrounded value of each voxel asked for is the prediction the stream corrects
(``napari_moec.correction.apply`` on the tile-local region and stride), which clips and rounds.
Constant and absent tiles are exact, so they keep any bound. Expert labels (top-1 expert
``e`` of tile ``c``, ``c`` flattened in C order) are ``1 + flat(c) * experts + e``; constant
and absent tiles are 0.

Per-tile overhead (what a tile costs besides its weights): 1 kind byte, the index varints (one
byte per axis below 128 tiles an axis), 2 width/experts bytes (H < 128), 4 CRC bytes: 10 bytes
for a 3D network tile of a grid under 128 tiles per axis; a grid tile (kind 3) has 1 + 9
field bytes instead of 2: 17 bytes; a correction adds its varint and stream (not overhead: it
is reported apart). Reading checks, in order: size, CRC, kind (against the
family), index (range and key), H and n (kind 2) or k and each field (kind 3, then the family's
``config_from_json``), C against the bytes left and the correction stream's header and index
(1.2), then the payload against the model (the family's ``unpack_payload``); a correction's
chunks are entropy-decoded when a region needs them, and their errors name the chunk too;
every failure raises MoecFormatError naming the chunk, and nothing is allocated from a size
that was not checked.
"""

from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass
from itertools import product
from typing import Any

import numpy as np

from .. import families, varint
from ..config import ModelConfig, QuantConfig
from ..errors import ConfigError, MoecFormatError
from ..volumes import SUPPORTED_DTYPES

__all__ = [
    "CODEC_NAME",
    "KIND_CONSTANT",
    "KIND_FAMILY",
    "KIND_NETWORK",
    "MAX_TILE_BYTES",
    "TILE_VERSION",
    "Tile",
    "TileGrid",
    "TileNetworks",
    "TileSpec",
    "TileValues",
    "encode_constant_tile",
    "encode_family_tile",
    "encode_network_tile",
    "label_dtype",
    "max_network_overhead",
    "network_overhead",
    "parse_tile",
    "tile_overhead",
    "tile_w0_first",
]

CODEC_NAME = "napari_moec.tile"
TILE_VERSION = (1, 2)
#: What a SIREN store writes (its bytes are version 1.0's).
SIREN_VERSION = (1, 0)
#: What a store of another family writes without a bound (its bytes are version 1.1's).
FAMILY_VERSION = (1, 1)
#: The minor version that added ``"bound"`` and the correction stream of network tiles.
BOUND_MINOR = 2
#: Largest correction stream a network tile may carry (checked before anything is sliced).
MAX_CORRECTION_BYTES = 1 << 28
KIND_CONSTANT = 1
KIND_NETWORK = 2
KIND_FAMILY = 3
#: Bounds of a kind-3 tile's model fields (their count, and each field's value).
MAX_FIELDS = 32
MAX_FIELD = 1 << 20
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

    def tile_box_in_region(self, index) -> tuple[tuple[int, int], ...]:
        """:meth:`tile_in_region` as (start, stop) per axis."""
        return tuple((s.start, s.stop) for s in self.tile_in_region(index))

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
    #: The bound every decoded voxel keeps (data units; stream 1.2), or None: no correction.
    max_error: float | None = None

    def __post_init__(self) -> None:
        if self.dtype not in SUPPORTED_DTYPES:
            raise ConfigError(f"unsupported dtype {self.dtype!r}")
        if not (self.vmin < self.vmax and self.norm[0] < self.norm[1]):
            raise ConfigError("empty intensity or normalisation range")
        if self.max_error is not None and not (
            math.isfinite(self.max_error) and self.max_error > 0
        ):
            raise ConfigError(f"max_error must be a finite number > 0, got {self.max_error}")

    @property
    def bounded(self) -> bool:
        """True when every network tile carries a correction stream (stream 1.2)."""
        return self.max_error is not None

    @property
    def itemsize(self) -> int:
        return np.dtype(self.dtype).itemsize


@dataclass(frozen=True)
class TileNetworks:
    """What every network tile shares: its model ``family``, how its weights are quantized and
    the SIREN knobs a tile's width and experts do not decide (SIREN only: a tile of another
    family states its whole model, kind 3). ``experts`` is the store's largest expert count
    (the stride of label ids), not each tile's."""

    quant: QuantConfig
    top_k: int = 1
    expert_layers: int = 3
    w0: float = 30.0
    w0_first: float | None = None
    experts: int = 2
    family: str = "siren"

    def __post_init__(self) -> None:
        if not 1 <= self.experts <= 64 or not 1 <= self.top_k <= 2:
            raise ConfigError(f"invalid experts {self.experts} or top_k {self.top_k}")
        if self.family not in families.FAMILIES:
            raise ConfigError(f"unknown model family {self.family!r}")

    @property
    def siren(self) -> bool:
        """True for a store of SIREN tiles (kind 2, the 1.0 stream)."""
        return self.family == "siren"

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
        """The network of a SIREN tile of width ``hidden`` with ``experts`` experts (spec
        rule)."""
        return self.networks.model_config(self.grid.ndim, hidden, experts)

    def region_shape(self, index) -> tuple[int, ...]:
        """The shape of the region tile ``index``'s network was trained on (a kind-3 tile's
        model config is read for it)."""
        return tuple(s.stop - s.start for s in self.grid.region_slices(index))

    @property
    def label_dtype(self) -> np.dtype:
        """The dtype of the store's expert label ids (``1 + flat(c) * experts + e``)."""
        return label_dtype(self.grid.num_tiles, self.networks.experts)

    # -- JSON ----------------------------------------------------------------------------
    def to_json(self) -> dict:
        """The codec configuration (dtype is the array's, not repeated here)."""
        grid, values, nets = self.grid, self.values, self.networks
        version = SIREN_VERSION if nets.siren else FAMILY_VERSION
        if values.bounded:
            version = TILE_VERSION
        doc = {
            "version": f"{version[0]}.{version[1]}",
            "shape": list(grid.shape),
            "tile": list(grid.tile),
            "margin": list(grid.margin),
            "range": [_num(values.vmin), _num(values.vmax)],
            "norm": [_num(values.norm[0]), _num(values.norm[1])],
            "model": [nets.top_k, nets.expert_layers, _num(nets.w0), _opt(nets.w0_first)],
            "quant": [nets.quant.precision, int(nets.quant.per_channel), int(nets.quant.entropy)],
            "experts": nets.experts,
        }
        if not nets.siren:  # 1.1: the family's tiles state their own model
            doc["model"] = None
            doc["family"] = nets.family
        if values.bounded:  # 1.2: network tiles carry a correction stream
            doc["bound"] = _num(values.max_error)
        return doc

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
    family = doc.get("family", "siren")
    if "family" in doc:
        known.add("family")
        if family == "siren" or not isinstance(family, str) or family not in families.FAMILIES:
            raise MoecFormatError(f"{CODEC_NAME} family {family!r} is not a non-SIREN family")
    if "bound" in doc:
        known.add("bound")
    if set(doc) != known:
        raise MoecFormatError(
            f"{CODEC_NAME} configuration keys {sorted(doc)} differ from {sorted(known)}"
        )
    version = doc["version"]
    if not isinstance(version, str) or version.split(".")[0] != str(TILE_VERSION[0]):
        raise MoecFormatError(f"{CODEC_NAME} version {version!r} is not supported (reads 1.x)")
    max_error = None
    if "bound" in doc:
        minor = version.split(".")[1] if version.count(".") == 1 else ""
        if not minor.isdigit() or int(minor) < BOUND_MINOR:
            raise MoecFormatError(
                f"{CODEC_NAME} bound needs version 1.{BOUND_MINOR} or later, not {version!r}"
            )
        max_error = _number(doc["bound"], "bound")
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
    if family != "siren":
        if model is not None:
            raise MoecFormatError(f"{CODEC_NAME} model must be null for family {family!r}")
        model = [1, 3, 30, None]  # the SIREN knobs, unused by a family's tiles
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
            max_error,
        ),
        TileNetworks(
            QuantConfig(q[0], bool(q[1]), bool(q[2])),
            top_k=top_k,
            expert_layers=layers,
            w0=_number(model[2], "model"),
            w0_first=w0_first,
            experts=experts,
            family=family,
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


def _correction_field(spec: TileSpec, correction: bytes | None) -> bytes:
    """The 1.2 field of a network tile: varint C + the C bytes of its correction stream, in a
    store with a bound (required there); nothing otherwise (the bytes 1.0/1.1 wrote)."""
    if not spec.values.bounded:
        if correction:
            raise ConfigError("a correction stream needs a store with a bound (max_error)")
        return b""
    if not correction or len(correction) > MAX_CORRECTION_BYTES:
        raise ConfigError(
            f"a network tile of a store with a bound needs its correction stream (1.."
            f"{MAX_CORRECTION_BYTES} bytes), got {len(correction or b'')}"
        )
    return varint.encode(len(correction)) + bytes(correction)


def encode_network_tile(
    spec: TileSpec, index, model: Any, payload: bytes, correction: bytes | None = None
) -> bytes:
    """The chunk of a network tile of the store's family: a SIREN ``payload`` packed
    (``format.pack_payload``) for ``model``, which must be ``spec.model_config(H, n)`` (kind
    2), or a family's payload for its config (kind 3, :func:`encode_family_tile`).
    ``correction`` is the tile's correction stream, required in a store with a bound
    (:func:`napari_moec.correction.encode` of the tile's voxels) and refused otherwise."""
    if not spec.networks.siren:
        return encode_family_tile(spec, index, model, payload, correction)
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
    return _finish(head + _correction_field(spec, correction) + bytes(payload))


def _family_fields(spec: TileSpec, config: Any) -> list[int]:
    """A family config's integers as a kind-3 tile stores them (checked against the spec)."""
    fields = families.codec(spec.networks.family).config_to_json(config)
    if (
        not isinstance(fields, list)
        or not 1 <= len(fields) <= MAX_FIELDS
        or any(type(v) is not int or not 0 <= v < MAX_FIELD for v in fields)
    ):
        raise ConfigError(
            f"family {spec.networks.family!r} config {fields!r} is not up to {MAX_FIELDS} "
            f"integers in [0, {MAX_FIELD}): it cannot be a tile's model"
        )
    return fields


def encode_family_tile(
    spec: TileSpec, index, config: Any, payload: bytes, correction: bytes | None = None
) -> bytes:
    """The chunk of a kind-3 tile: ``config`` (a model config of the store's family for the
    tile's region shape, at most ``spec.networks.experts`` experts), its ``payload`` and, in a
    store with a bound, its ``correction`` stream."""
    if spec.networks.siren:
        raise ConfigError("a SIREN store holds kind-2 network tiles (encode_network_tile)")
    shape = spec.region_shape(index)
    if tuple(config.shape) != shape:
        raise ConfigError(f"tile model shape {config.shape} is not the region's {shape}")
    if config.num_experts > spec.networks.experts:
        raise ConfigError(
            f"{config.num_experts} experts exceed the store's {spec.networks.experts}"
        )
    fields = _family_fields(spec, config)
    head = bytes([KIND_FAMILY]) + _index_bytes(spec, index) + varint.encode(len(fields))
    head += b"".join(varint.encode(v) for v in fields)
    return _finish(head + _correction_field(spec, correction) + bytes(payload))


def tile_overhead(spec: TileSpec, index, config: Any) -> int:
    """Bytes of the network tile holding ``config`` besides its payload."""
    if spec.networks.siren:
        return network_overhead(spec, index, config.hidden_features, config.num_experts)
    fields = _family_fields(spec, config)
    return (
        1
        + len(_index_bytes(spec, index))
        + len(varint.encode(len(fields)))
        + sum(len(varint.encode(v)) for v in fields)
        + 4
    )


def max_network_overhead(spec: TileSpec, index) -> int:
    """The most bytes any network tile at ``index`` spends besides its payload (what the
    allocator sets aside before sharing the budget)."""
    if spec.networks.siren:
        return network_overhead(spec, index, 4096, 64)
    return 1 + len(_index_bytes(spec, index)) + 1 + MAX_FIELDS * 3 + 4


def network_overhead(spec: TileSpec, index, hidden: int, experts: int) -> int:
    """Bytes of a SIREN network tile besides its payload (kind, index, width, experts, CRC)."""
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
    """One parsed chunk: a constant (``value``) or a network (``model`` + ``payload``;
    ``model`` is a ``ModelConfig`` for kind 2, the store's family's config for kind 3)."""

    kind: int
    index: tuple[int, ...]
    nbytes: int
    value: float | int | None = None
    model: Any = None
    payload: bytes = b""
    #: The parsed correction stream of a network tile in a store with a bound (1.2), else
    #: None, and its length in the chunk.
    correction: Any = None
    correction_nbytes: int = 0

    @property
    def network(self) -> bool:
        """True for a network tile of either kind."""
        return self.model is not None


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
    network_kind = KIND_NETWORK if spec.networks.siren else KIND_FAMILY
    if kind not in (KIND_CONSTANT, network_kind):
        raise MoecFormatError(
            f"chunk {name}: tile kind {kind} is not valid in a {spec.networks.family} store"
        )
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
    if kind == KIND_FAMILY:
        return _parse_family_tile(spec, data, pos, end, index, name)
    hidden, pos = varint.decode(data, pos, end, "width", f"chunk {name}: ")
    experts, pos = varint.decode(data, pos, end, "number of experts", f"chunk {name}: ")
    if not 1 <= hidden <= 4096 or not 1 <= experts <= min(64, spec.networks.experts):
        raise MoecFormatError(f"chunk {name}: invalid network width {hidden} or {experts} experts")
    try:
        model = spec.model_config(hidden, experts)
    except ConfigError as exc:
        raise MoecFormatError(f"chunk {name}: {exc}") from None
    correction, start, pos = _parse_correction(spec, data, pos, end, index, name)
    return Tile(kind, index, n, model=model, payload=data[pos:end], correction=correction,
                correction_nbytes=pos - start)  # fmt: skip


def _parse_correction(spec: TileSpec, data: bytes, pos: int, end: int, index, name):
    """The 1.2 field of a network tile in a store with a bound: ``(parsed stream, where its
    bytes start, where they end)``; ``(None, pos, pos)`` in a store without one. The length
    is checked against the bytes left before anything is sliced; the stream is parsed for the
    tile's own shape and must state the store's bound and range (what the writer wrote)."""
    if not spec.values.bounded:
        return None, pos, pos
    from ..correction_codec import parse  # the tile stream needs it only with a bound

    where = f"chunk {name}: "
    size, pos = varint.decode(data, pos, end, "correction length", where)
    if not 1 <= size <= min(end - pos, MAX_CORRECTION_BYTES):
        raise MoecFormatError(
            f"{where}correction length {size} does not fit the {end - pos} bytes left"
        )
    shape = tuple(s.stop - s.start for s in spec.grid.tile_slices(index))
    try:
        stream = parse(data[pos : pos + size], shape, spec.values.dtype)
    except MoecFormatError as exc:
        raise MoecFormatError(f"{where}correction: {exc}") from None
    values = spec.values
    if stream.max_error != values.max_error or (stream.lo, stream.hi) != (values.vmin, values.vmax):
        raise MoecFormatError(
            f"{where}correction states bound {stream.max_error} and range [{stream.lo}, "
            f"{stream.hi}], not the store's {values.max_error} and [{values.vmin}, {values.vmax}]"
        )
    return stream, pos, pos + size


def _parse_family_tile(spec: TileSpec, data: bytes, pos: int, end: int, index, name) -> Tile:
    """The kind-3 part of :func:`parse_tile`: the field count, each field, then the family's
    own checks of the config (the payload is checked when it is unpacked)."""
    where = f"chunk {name}: "
    count, pos = varint.decode(data, pos, end, "number of model fields", where)
    if not 1 <= count <= MAX_FIELDS:
        raise MoecFormatError(f"{where}{count} model fields (1..{MAX_FIELDS} allowed)")
    fields = []
    for i in range(count):
        v, pos = varint.decode(data, pos, end, f"model field {i}", where)
        if v >= MAX_FIELD:
            raise MoecFormatError(f"{where}model field {i} = {v} is out of range")
        fields.append(v)
    codec = families.codec(spec.networks.family)
    try:
        model = codec.config_from_json(fields, spec.region_shape(index))
    except MoecFormatError as exc:
        raise MoecFormatError(f"{where}{exc}") from None
    experts = getattr(model, "num_experts", 1)
    if not 1 <= experts <= spec.networks.experts:
        raise MoecFormatError(
            f"{where}{experts} experts exceed the store's {spec.networks.experts}"
        )
    correction, start, pos = _parse_correction(spec, data, pos, end, index, name)
    try:
        codec.unpack_payload(model, spec.networks.quant, data[pos:end], decode_weights=False)
    except MoecFormatError as exc:
        raise MoecFormatError(f"{where}{exc}") from None
    return Tile(
        KIND_FAMILY, index, len(data), model=model, payload=data[pos:end],
        correction=correction, correction_nbytes=pos - start,
    )  # fmt: skip
