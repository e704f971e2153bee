"""Tile stream 1.1: tiles of a model family other than SIREN (kind 3, the grid family here),
without a cluster. Stores are built from untrained (seeded) grid networks, stored by the
family's own rate control, which decode like any others."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from napari_moec import families
from napari_moec.config import QuantConfig
from napari_moec.errors import ConfigError, MoecFormatError
from napari_moec.families.grid.family import GridOptions
from napari_moec.tiled.allocate import allocate
from napari_moec.tiled.reader import open_tiled
from napari_moec.tiled.scan import TileStats
from napari_moec.tiled.store import chunk_path, metadata_documents, write_atomic, write_metadata
from napari_moec.tiled.tiledecode import DECODE_COUNTS, decode_tile
from napari_moec.tiled.tileformat import (
    KIND_FAMILY,
    TileGrid,
    TileNetworks,
    TileSpec,
    TileValues,
    encode_constant_tile,
    encode_family_tile,
    encode_network_tile,
    parse_tile,
    tile_overhead,
)
from napari_moec.tiled.tilemodels import smallest_payload, tile_model_config

QUANT = QuantConfig("int8", False, True)
GRID = TileSpec(
    TileGrid((40, 36, 36), (16, 16, 16), (2, 2, 2)),
    TileValues("uint16", 100.0, 4000.0),
    TileNetworks(QUANT, experts=2, family="grid"),
)
SIREN = TileSpec(GRID.grid, GRID.values, TileNetworks(QUANT, experts=2))
OPTIONS = GridOptions(num_experts=2)
BUDGET = 1500


def grid_chunk(spec: TileSpec, index, seed: int = 0) -> bytes:
    """A chunk holding a seeded, untrained 2-expert grid network stored at ``BUDGET`` bytes."""
    family = families.get("grid")
    config = tile_model_config(spec, index, BUDGET, None, OPTIONS)
    model = family.build(config, generator=torch.Generator().manual_seed(seed + sum(index)))
    with torch.no_grad():  # untrained latents are 0: give the tile some structure
        for latents in model.grids.latents:
            latents.normal_(0, 2, generator=torch.Generator().manual_seed(seed))
    payload = family.fit_payload(model, config, spec.networks.quant, BUDGET).payload
    return encode_network_tile(spec, index, config, payload)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A grid store: networks everywhere, one constant tile, one absent (fill) tile."""
    root = tmp_path_factory.mktemp("grid") / "g.ome.zarr"
    docs = metadata_documents(GRID, axes="ZYX", spacing=None, unit=None, fill_value=100,
                              name="g")  # fmt: skip
    write_metadata(root, docs)
    for index in GRID.grid.indices():
        if index == (0, 0, 0):
            continue
        data = (encode_constant_tile(GRID, index, 1234) if index == (1, 1, 1)
                else grid_chunk(GRID, index))  # fmt: skip
        write_atomic(chunk_path(root, index), data)
    return root


@pytest.fixture
def scratch(store, tmp_path):
    """A copy of the store to damage."""
    import shutil

    copy = tmp_path / "g.ome.zarr"
    shutil.copytree(store, copy)
    return copy


def test_siren_configuration_stays_version_1_0_and_grid_writes_1_1():
    siren, grid = SIREN.to_json(), GRID.to_json()
    assert siren["version"] == "1.0" and "family" not in siren
    assert grid["version"] == "1.1" and grid["family"] == "grid" and grid["model"] is None
    assert TileSpec.from_json(grid, "uint16") == GRID
    assert TileSpec.from_json(siren, "uint16") == SIREN
    for bad in ({**grid, "family": "siren"}, {**grid, "family": "nope"},
                {**grid, "model": [1, 3, 30, None]}, {**siren, "model": None},
                {**grid, "family": 3}):  # fmt: skip
        with pytest.raises(MoecFormatError):
            TileSpec.from_json(bad, "uint16")


def test_kind_3_layout_overhead_and_kind_checks():
    chunk = grid_chunk(GRID, (2, 1, 0))
    tile = parse_tile(GRID, chunk, expected_index=(2, 1, 0))
    config = tile_model_config(GRID, (2, 1, 0), BUDGET, None, OPTIONS)
    assert tile.kind == KIND_FAMILY and tile.network and tile.model == config
    assert tile.model.shape == GRID.region_shape((2, 1, 0)) == (10, 20, 18)
    fields = config.to_json()
    assert chunk[:5] == bytes([3, 2, 1, 0, len(fields)]) and chunk[5:14] == bytes(fields)
    assert len(chunk) - len(tile.payload) == tile_overhead(GRID, (2, 1, 0), config) == 18
    assert int.from_bytes(chunk[-4:], "little") == zlib.crc32(chunk[:-4])
    with pytest.raises(MoecFormatError, match="kind 3 is not valid in a siren store"):
        parse_tile(SIREN, chunk)
    raw = b"\x02\x02\x01\x00\x06\x02" + bytes(40)
    with pytest.raises(MoecFormatError, match="kind 2 is not valid in a grid store"):
        parse_tile(GRID, raw + zlib.crc32(raw).to_bytes(4, "little"))
    with pytest.raises(ConfigError, match="region"):  # a config of another shape
        encode_family_tile(GRID, (0, 0, 0), config, tile.payload)


def test_plain_zarr_lazy_reader_roi_and_stride_agree(store):
    array = zarr.open_array(store / "0", mode="r")
    full = array[:]
    assert full.shape == GRID.grid.shape and full.dtype == np.uint16
    assert (full[:16, :16, :16] == 100).all() and (full[16:32, 16:32, 16:32] == 1234).all()
    assert full.min() >= 100 and full.max() <= 4000 and len(np.unique(full)) > 50
    lazy = open_tiled(store)
    assert np.array_equal(lazy.decode(), full)
    assert np.array_equal(array[3:30:4, 5, 1::3], full[3:30:4, 5, 1::3])
    assert np.array_equal(array.oindex[[1, 17, 39], :, [0, 20, 35]],
                          full[[1, 17, 39]][:, :, [0, 20, 35]])  # fmt: skip
    assert np.array_equal(lazy.decode(roi="5:37,3:30,10:36"), full[5:37, 3:30, 10:36])
    assert np.array_equal(lazy.decode(stride=(2, 3, 4)), full[::2, ::3, ::4])
    DECODE_COUNTS.clear()
    array[20:30, 2:10, 20:30]
    assert sum(DECODE_COUNTS.values()) == 1


def test_labels_are_the_family_experts_of_each_tile(store):
    labels = open_tiled(store).expert_labels()
    assert (labels[:16, :16, :16] == 0).all() and (labels[16:32, 16:32, 16:32] == 0).all()
    seen = set()
    for index in GRID.grid.indices():
        values = np.unique(labels[GRID.grid.tile_slices(index)])
        for v in values[values > 0]:
            assert (int(v) - 1) // GRID.networks.experts == GRID.grid.flat(index)
            seen.add((int(v) - 1) % GRID.networks.experts)
    assert (labels > 0).sum() > 0 and seen <= {0, 1}
    chunk = (store / "0" / "c" / "2" / "1" / "0").read_bytes()
    axes = [np.arange(8), np.arange(16), np.arange(16)]
    values, ids = decode_tile(GRID, chunk, axes, labels=True)
    assert np.array_equal(values, zarr.open_array(store / "0", mode="r")[32:40, 16:32, 0:16])
    assert ids.min() >= 1 + GRID.grid.flat((2, 1, 0)) * 2


def _read(root, data: bytes):
    chunk_path(root, (0, 1, 2)).write_bytes(data)
    zarr.open_array(root / "0", mode="r")[0:16, 16:32, 32:36]


@pytest.mark.parametrize(
    "fields",
    [b"\x00", b"\x21" + bytes(33), b"\x09" + b"\xff\xff\x7f" * 9,  # count 0, 33, a field >= 2^20
     b"\x09\x0c\x18\x01\x80\x01\x10\x01\x02\x40\x01",  # hidden 128 .. over the latents cap?
     b"\x09\x06\x01\x01\x10\x10\x01\x02\x08\x01",  # 16 experts > the store's 2
     b"\x09\x06\x01\x05\x10\x01\x01\x02\x08\x01",  # kernel 5
     b"\x08\x06\x01\x01\x10\x01\x01\x02\x08"],  # 8 fields, not the family's 9
)  # fmt: skip
def test_hostile_kind_3_fields_are_rejected_naming_the_chunk(scratch, fields):
    raw = b"\x03\x00\x01\x02" + fields + bytes(64)
    with pytest.raises(MoecFormatError, match="0/c/0/1/2"):
        _read(scratch, raw + zlib.crc32(raw).to_bytes(4, "little"))


@settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_fuzz_kind_3_chunks(scratch, data):
    """Mutated grid chunks, and any body behind a valid CRC after a kind-3 head: decoded or a
    MoecFormatError naming the chunk, never another exception."""
    chunk = bytearray(grid_chunk(GRID, (0, 1, 2)))
    action = data.draw(st.sampled_from(["flip", "truncate", "append", "body"]))
    if action == "flip":
        pos = data.draw(st.integers(0, len(chunk) - 1))
        chunk[pos] ^= data.draw(st.integers(1, 255))
    elif action == "truncate":
        chunk = chunk[: data.draw(st.integers(0, len(chunk) - 1))]
    elif action == "append":
        chunk += data.draw(st.binary(min_size=1, max_size=16))
    else:
        raw = b"\x03\x00\x01\x02" + data.draw(st.binary(max_size=200))
        chunk = raw + zlib.crc32(raw).to_bytes(4, "little")
    try:
        _read(scratch, bytes(chunk))
    except MoecFormatError as exc:
        assert "0/c/0/1/2" in str(exc)


def test_grid_allocation_sizes_each_region_through_the_family():
    spec = TileSpec(TileGrid((16, 16, 48), (16, 16, 16), (0, 0, 2)), GRID.values,
                    GRID.networks)  # fmt: skip
    stats = [TileStats((0, 0, k), 16**3, 0.0, 1000.0, True, p)
             for k, p in enumerate([1.0, 100.0, 10000.0])]  # fmt: skip
    plan = allocate(spec, stats, 9000, options=OPTIONS)
    shares = [t.payload_budget for t in plan.tiles]
    assert shares[0] < shares[1] < shares[2]
    assert plan.payload_bytes + plan.fixed_bytes <= 9000
    family = families.get("grid")
    for t in plan.tiles:
        assert t.config.shape == spec.region_shape(t.index) and t.experts == 2
        assert family.predict_payload_nbytes(t.config, QUANT) <= t.payload_budget
        assert t.reserved >= tile_overhead(spec, t.index, t.config)
    least = smallest_payload(spec, (0, 0, 1), OPTIONS)
    assert tile_model_config(spec, (0, 0, 1), least, None, OPTIONS) is not None
    assert tile_model_config(spec, (0, 0, 1), least - 1, None, OPTIONS) is None
    with pytest.raises(ConfigError, match="use larger tiles or a lower ratio"):
        allocate(spec, stats, 3 * least, options=OPTIONS)


def test_grid_tiles_split_the_bytes_with_their_familys_exponent():
    """The difficulty split's exponent is the store family's (TilePolicy): a grid store tilts
    bytes further toward hard tiles than SIREN's 0.3 would, and a given exponent wins."""
    spec = TileSpec(TileGrid((16, 16, 48), (16, 16, 16), (0, 0, 2)), GRID.values,
                    GRID.networks)  # fmt: skip
    stats = [TileStats((0, 0, k), 16**3, 0.0, 1000.0, True, p)
             for k, p in enumerate([1.0, 100.0, 10000.0])]  # fmt: skip
    exponent = families.get("grid").tile_policy.difficulty_exponent
    assert exponent == 0.6 and families.get("siren").tile_policy.difficulty_exponent == 0.3

    def shares(**kw):
        return [t.payload_budget for t in allocate(spec, stats, 9000, options=OPTIONS, **kw).tiles]

    default, own, siren_like = shares(), shares(exponent=exponent), shares(exponent=0.3)
    assert default == own
    assert default[2] / default[0] > siren_like[2] / siren_like[0]
