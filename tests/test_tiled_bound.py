"""Tile stream 1.2: a store with a bound, whose network tiles carry a correction stream, without
a cluster. Networks are seeded and untrained (far off the data), so the correction does all the
work: every voxel must still be within the bound, through zarr, the lazy readers, ROI and
stride, for uint16 at both ends of its range and for float32."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from napari_moec import families, varint
from napari_moec._napari.lazy import LazyVolume
from napari_moec._napari.lazy_blocks import TiledBlocks
from napari_moec.config import QuantConfig
from napari_moec.correction import BoundViolation
from napari_moec.errors import ConfigError, MoecFormatError
from napari_moec.families.grid.family import GridOptions
from napari_moec.families.siren.moe import MoESiren
from napari_moec.format import pack_payload
from napari_moec.sampling import Normalization
from napari_moec.tiled.reader import open_tiled
from napari_moec.tiled.store import chunk_path, metadata_documents, write_atomic, write_metadata
from napari_moec.tiled.tilebound import correct_tile, tile_prediction, verify_chunk
from napari_moec.tiled.tileformat import (
    TileGrid,
    TileNetworks,
    TileSpec,
    TileValues,
    encode_constant_tile,
    encode_network_tile,
    parse_tile,
)
from napari_moec.tiled.tilemodels import tile_model_config

QUANT = QuantConfig("int8", False, True)
GRID = TileGrid((24, 20, 18), (16, 16, 16), (2, 2, 2))
CPU = torch.device("cpu")
BUDGET = 600
FILL, CONSTANT = (0, 0, 0), (1, 1, 1)


def make_spec(dtype: str, family: str, max_error: float | None) -> TileSpec:
    vmin, vmax = (0.0, 65535.0) if dtype == "uint16" else (-1.5, 2.5)
    return TileSpec(
        GRID, TileValues(dtype, vmin, vmax, max_error=max_error),
        TileNetworks(QUANT, experts=2, family=family),
    )  # fmt: skip


def make_volume(spec: TileSpec) -> np.ndarray:
    """Smooth data plus noise that spans the whole range (both ends are hit: the clip range's
    edges), a fill-value tile and a constant tile."""
    rng = np.random.default_rng(7)
    z, y, x = np.meshgrid(*[np.linspace(0, 1, n) for n in GRID.shape], indexing="ij")
    u = np.clip(0.5 + 0.45 * np.sin(5 * z + 3 * y) * np.cos(4 * x)
                + 0.1 * rng.standard_normal(GRID.shape), 0, 1)  # fmt: skip
    lo, hi = spec.values.vmin, spec.values.vmax
    v = lo + u * (hi - lo)
    dtype = np.dtype(spec.values.dtype)
    v = np.rint(v) if dtype.kind == "u" else v
    v = v.astype(dtype)
    v[GRID.tile_slices(FILL)] = 0
    v[GRID.tile_slices(CONSTANT)] = dtype.type(1234 if dtype.kind == "u" else 0.5)
    v[20, 5, 5], v[20, 6, 5], v[3, 18, 17] = dtype.type(hi), dtype.type(lo), dtype.type(hi)
    return v


def stored_network(spec: TileSpec, index, seed: int = 0):
    """(config, payload, stored model) of a seeded, untrained tile network of the family."""
    family = families.get(spec.networks.family)
    if spec.networks.siren:
        config = spec.model_config(6, 2)
        torch.manual_seed(seed + sum(index))
        payload = pack_payload(config, QUANT, MoESiren(config).layout_state())
    else:
        config = tile_model_config(spec, index, BUDGET, None, GridOptions(num_experts=2))
        model = family.build(config, generator=torch.Generator().manual_seed(seed + sum(index)))
        with torch.no_grad():
            for latents in model.grids.latents:
                latents.normal_(0, 2, generator=torch.Generator().manual_seed(seed))
        payload = family.fit_payload(model, config, QUANT, BUDGET).payload
    weights = family.codec.unpack_payload(config, QUANT, payload)
    return config, payload, family.model_from_weights(config, weights)


def bounded_chunk(spec: TileSpec, index, volume: np.ndarray, seed: int = 0) -> bytes:
    """What the tile task writes: the network, its correction, verified from the bytes."""
    family = families.get(spec.networks.family)
    config, payload, stored = stored_network(spec, index, seed)
    original = volume[spec.grid.tile_slices(index)]
    values = tile_prediction(family, stored, spec, index, CPU)
    raw = correct_tile(spec, index, original, values, stored, CPU)
    data = encode_network_tile(spec, index, config, payload, raw)
    verify_chunk(spec, index, data, original)
    return data


def write_store(root, spec: TileSpec, volume: np.ndarray) -> None:
    docs = metadata_documents(spec, axes="ZYX", spacing=None, unit=None, fill_value=0,
                              name="b")  # fmt: skip
    write_metadata(root, docs)
    for index in spec.grid.indices():
        if index == FILL:
            continue
        value = volume[spec.grid.tile_slices(index)].flat[0]
        data = (encode_constant_tile(spec, index, value) if index == CONSTANT
                else bounded_chunk(spec, index, volume))  # fmt: skip
        write_atomic(chunk_path(root, index), data)


CASES = [("uint16", "grid", 300.0), ("uint16", "siren", 2.0), ("float32", "grid", 0.01),
         ("float32", "siren", 0.002)]  # fmt: skip


@pytest.fixture(scope="module", params=CASES, ids=lambda c: "-".join(map(str, c)))
def bounded(request, tmp_path_factory):
    spec = make_spec(*request.param)
    volume = make_volume(spec)
    root = tmp_path_factory.mktemp("bound") / "b.ome.zarr"
    write_store(root, spec, volume)
    return spec, volume, root


def _within(decoded: np.ndarray, original: np.ndarray, bound: float) -> float:
    error = np.abs(decoded.astype(np.float64) - original.astype(np.float64))
    assert error.max() <= bound, (error.max(), bound)
    return float(error.max())


def test_the_bound_holds_through_zarr_the_lazy_readers_roi_and_stride(bounded):
    spec, volume, root = bounded
    bound = spec.values.max_error
    array = zarr.open_array(root / "0", mode="r")
    full = array[:]
    _within(full, volume, bound)
    assert volume.min() == spec.values.vmin and volume.max() == spec.values.vmax
    assert full.min() >= spec.values.vmin and full.max() <= spec.values.vmax
    assert np.array_equal(full[GRID.tile_slices(CONSTANT)], volume[GRID.tile_slices(CONSTANT)])
    assert (full[GRID.tile_slices(FILL)] == 0).all()
    # Untrained networks alone miss the bound by far: the correction did the work.
    family = families.get(spec.networks.family)
    index = (0, 1, 0)
    _, _, stored = stored_network(spec, index)
    norm = Normalization(spec.values.vmin, spec.values.vmax, *spec.values.norm)
    network = norm.invert(tile_prediction(family, stored, spec, index, CPU), volume.dtype)
    original = volume[GRID.tile_slices(index)]
    assert np.abs(network.astype(np.float64) - original).max() > 4 * bound
    _within(array[3:23:4, 5, 1::3], volume[3:23:4, 5, 1::3], bound)
    _within(array.oindex[[1, 17, 23], :, [0, 16, 17]], volume[[1, 17, 23]][:, :, [0, 16, 17]],
            bound)  # fmt: skip
    store = open_tiled(root)
    _within(store.decode(), volume, bound)
    _within(store.decode(roi="5:23,3:19,2:18"), volume[5:23, 3:19, 2:18], bound)
    _within(store.decode(stride=(2, 3, 4)), volume[::2, ::3, ::4], bound)
    _within(store.decode(roi="1:24,:,7:", stride=3), volume[1:24:3, ::3, 7::3], bound)
    lazy = LazyVolume(TiledBlocks(store))
    for key in [(5,), (slice(3, 20, 4), slice(None), -1), (Ellipsis, slice(17, 2, -3)), (-1, -2)]:
        got = lazy[key]
        _within(np.asarray(got) if isinstance(got, LazyVolume) else got, volume[key], bound)


def test_configuration_states_the_bound_in_version_1_2(bounded):
    spec, _, root = bounded
    doc = spec.to_json()
    assert doc["version"] == "1.2" and doc["bound"] == spec.values.max_error
    assert TileSpec.from_json(doc, spec.values.dtype) == spec
    assert open_tiled(root).spec == spec
    info = open_tiled(root).info()
    assert info["max_error"] == spec.values.max_error and info["correction_bytes"] > 0
    chunks = sum(len(chunk_path(root, i).read_bytes()) for i in GRID.indices() if i != FILL)
    assert info["chunk_bytes"] == chunks
    for bad in ({**doc, "version": "1.1"}, {**doc, "version": "1.x"}, {**doc, "bound": -1},
                {**doc, "bound": 0}, {**doc, "bound": "1"}, {**doc, "bound": None},
                {**doc, "bound": float("inf")}, {**doc, "bound": True}):  # fmt: skip
        with pytest.raises(MoecFormatError):
            TileSpec.from_json(bad, spec.values.dtype)


def test_writer_refuses_a_tile_without_its_correction_and_a_correction_without_a_bound():
    spec = make_spec("uint16", "grid", 300.0)
    volume = make_volume(spec)
    config, payload, _ = stored_network(spec, (0, 1, 0))
    with pytest.raises(ConfigError, match="needs its correction stream"):
        encode_network_tile(spec, (0, 1, 0), config, payload)
    plain = make_spec("uint16", "grid", None)
    with pytest.raises(ConfigError, match="needs a store with a bound"):
        encode_network_tile(plain, (0, 1, 0), config, payload, b"\x01")
    # The check from the chunk's own bytes: a tighter promise than the stream keeps fails.
    data = bounded_chunk(spec, (0, 1, 0), volume)
    tight = make_spec("uint16", "grid", 1.0)
    with pytest.raises(MoecFormatError, match="not the store's"):
        verify_chunk(tight, (0, 1, 0), data, volume[GRID.tile_slices((0, 1, 0))])
    with pytest.raises(BoundViolation, match="exceed max_error"):
        shifted = volume[GRID.tile_slices((0, 1, 0))].astype(np.int64) + 301
        verify_chunk(spec, (0, 1, 0), data, shifted)


# -- hostile bytes in the new field --------------------------------------------------------------
@pytest.fixture(scope="module")
def hostile():
    spec = make_spec("uint16", "grid", 300.0)
    volume = make_volume(spec)
    return spec, volume, bounded_chunk(spec, (0, 1, 0), volume)


def _split(spec: TileSpec, data: bytes, index=(0, 1, 0)):
    """(head up to the correction length, correction bytes, payload) of a bounded chunk."""
    tile = parse_tile(spec, data, expected_index=index)
    end = len(data) - 4
    payload_start = end - len(tile.payload)
    start = payload_start - tile.correction_nbytes
    head = data[: start - len(varint.encode(tile.correction_nbytes))]
    return head, data[start:payload_start], data[payload_start:end]


def _crc(body: bytes) -> bytes:
    return body + zlib.crc32(body).to_bytes(4, "little")


def test_hostile_correction_fields_are_rejected_naming_the_chunk(hostile):
    spec, volume, data = hostile
    head, raw, payload = _split(spec, data)
    assert _crc(head + varint.encode(len(raw)) + raw + payload) == data
    other = bounded_chunk(spec, (1, 1, 0), volume)  # a tile of another shape (8x4x16)
    _, raw_other, _ = _split(spec, other, (1, 1, 0))
    looser = make_spec("uint16", "grid", 600.0)
    _, raw_looser, _ = _split(looser, bounded_chunk(looser, (0, 1, 0), volume))
    for body, match in [
        (head + b"\x00" + raw + payload, "correction length 0"),
        (head + varint.encode(len(raw) + len(payload) + 1) + raw + payload, "does not fit"),
        (head + b"\xff\xff\xff\xff\xff\x7f" + raw + payload, "correction length"),
        (head + varint.encode(2**40), "correction length"),
        (head, "correction length"),  # truncated right where the field starts
        (head + varint.encode(len(raw_other)) + raw_other + payload, "correction"),
        (head + varint.encode(len(raw_looser)) + raw_looser + payload, "not the store's"),
        (head + varint.encode(len(raw) - 1) + raw[:-1] + payload, "chunk x"),
    ]:
        with pytest.raises(MoecFormatError, match=match):
            parse_tile(spec, _crc(body), name="x")


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_fuzz_bounded_chunks(hostile, data):
    """Mutated bounded chunks, and any bytes behind a valid head and CRC: decoded within the
    bound's format checks or a MoecFormatError naming the chunk, never another exception."""
    spec, _, chunk = hostile
    head, raw, payload = _split(spec, chunk)
    action = data.draw(st.sampled_from(["flip", "truncate", "append", "field", "stream"]))
    body = bytearray(chunk)
    if action == "flip":
        pos = data.draw(st.integers(0, len(body) - 1))
        body[pos] ^= data.draw(st.integers(1, 255))
    elif action == "truncate":
        body = body[: data.draw(st.integers(0, len(body) - 1))]
    elif action == "append":
        body += data.draw(st.binary(min_size=1, max_size=16))
    elif action == "field":  # any length varint and bytes after a valid head, CRC fixed
        tail = varint.encode(data.draw(st.integers(0, 2**35))) + data.draw(st.binary(max_size=300))
        body = bytearray(_crc(head + tail))
    else:  # the correction stream's own bytes mutated, length and CRC kept valid
        mutated = bytearray(raw)
        for _ in range(data.draw(st.integers(1, 4))):
            mutated[data.draw(st.integers(0, len(mutated) - 1))] = data.draw(st.integers(0, 255))
        body = bytearray(_crc(head + varint.encode(len(mutated)) + bytes(mutated) + payload))
    axes = [np.arange(n) for n in (16, 16, 16)]
    try:
        decode_tile_named(spec, bytes(body), axes)
    except MoecFormatError as exc:
        assert "0/c/0/1/0" in str(exc)


def decode_tile_named(spec, data, axes):
    from napari_moec.tiled.tiledecode import decode_tile

    return decode_tile(spec, data, axes, name="0/c/0/1/0", expected_index=(0, 1, 0))


def test_a_lazy_result_of_a_bounded_store_states_its_bound(bounded):
    """What the widget's readouts and Compare call the guaranteed bound of an opened store."""
    from napari_moec._napari.tiled_run import LazyResult

    spec, _, root = bounded
    result = LazyResult("b", TiledBlocks(open_tiled(root)), 1.0, store=str(root))
    assert result.max_error == spec.values.max_error
    golden = Path(__file__).parent / "data" / "golden_tiled" / "grid.ome.zarr"
    plain = LazyResult("g", TiledBlocks(open_tiled(golden)), 1.0, store=str(golden))
    assert plain.max_error is None


@pytest.mark.parametrize("family", ["grid", "siren"])
def test_4d_tiles_keep_the_bound(family, tmp_path):
    """TZYX stores: tiles of two time points, each tile's correction chunked by 1 along T."""
    grid4 = TileGrid((3, 12, 10, 9), (2, 8, 8, 8), (0, 2, 2, 2))
    spec = TileSpec(grid4, TileValues("uint16", 0.0, 65535.0, max_error=100.0),
                    TileNetworks(QUANT, experts=2, family=family))  # fmt: skip
    volume = np.random.default_rng(1).integers(0, 65536, grid4.shape).astype(np.uint16)
    volume.flat[:2] = (0, 65535)
    root = tmp_path / "4d.ome.zarr"
    write_metadata(root, metadata_documents(spec, axes="TZYX", spacing=None, unit=None,
                                            fill_value=0, name="4d"))  # fmt: skip
    for index in grid4.indices():
        write_atomic(chunk_path(root, index), bounded_chunk(spec, index, volume))
    _within(zarr.open_array(root / "0", mode="r")[:], volume, 100.0)
    part = open_tiled(root).decode(roi="1:3,2:12,:,3:9", stride=(1, 2, 3, 1))
    _within(part, volume[1:3, 2:12:2, ::3, 3:9], 100.0)
