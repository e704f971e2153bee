"""The tile stream, the zarr codec and the planning pieces of the tiled engine, without a cluster:
stores here are built from untrained networks, which decode like any others."""

from __future__ import annotations

import math
import zlib

import numpy as np
import pytest
import torch
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from napari_moec.config import QuantConfig
from napari_moec.errors import ConfigError, MoecFormatError
from napari_moec.families.grid.family import GRID_TILES
from napari_moec.families.siren.family import SIREN_TILES
from napari_moec.families.siren.moe import MoESiren
from napari_moec.format import pack_payload
from napari_moec.tiled.allocate import allocate, choose_fill
from napari_moec.tiled.codec import MoecTileCodec, chunk_index_from_key
from napari_moec.tiled.reader import open_tiled
from napari_moec.tiled.scan import probe_factor, tile_stats
from napari_moec.tiled.store import chunk_path, metadata_documents, write_atomic, write_metadata
from napari_moec.tiled.tiledecode import DECODE_COUNTS, decode_tile
from napari_moec.tiled.tileformat import (
    CODEC_NAME,
    TileGrid,
    TileNetworks,
    TileSpec,
    TileValues,
    encode_constant_tile,
    encode_network_tile,
    network_overhead,
    parse_tile,
)
from napari_moec.tiled.tiling import ALIGN, balanced_edge, choose_margin, choose_tile

SPEC = TileSpec(
    TileGrid((40, 36, 36), (16, 16, 16), (2, 2, 2)),
    TileValues("uint16", 100.0, 4000.0),
    TileNetworks(QuantConfig()),
)


def network_chunk(spec: TileSpec, index, hidden=6, experts=2, seed=0) -> bytes:
    """A chunk holding an untrained (seeded) network of width ``hidden``."""
    model = spec.model_config(hidden, experts)
    torch.manual_seed(seed + sum(index))
    state = MoESiren(model).layout_state()
    return encode_network_tile(spec, index, model, pack_payload(model, spec.networks.quant, state))


@pytest.fixture
def store(tmp_path):
    """A tiled store: networks everywhere, one constant tile, one absent (fill) tile."""
    root = tmp_path / "t.ome.zarr"
    docs = metadata_documents(SPEC, axes="ZYX", spacing=(2.0, 1.0, 1.0), unit="um",
                              fill_value=100, name="t")  # fmt: skip
    write_metadata(root, docs)
    for index in SPEC.grid.indices():
        if index == (0, 0, 0):
            continue  # absent: the fill value
        data = (encode_constant_tile(SPEC, index, 1234) if index == (1, 1, 1)
                else network_chunk(SPEC, index))  # fmt: skip
        write_atomic(chunk_path(root, index), data)
    return root


def test_entry_point_registers_the_codec():
    assert zarr.registry.get_codec_class(CODEC_NAME) is MoecTileCodec


def test_spec_json_round_trip_and_rejects_bad_configs():
    doc = SPEC.to_json()
    assert TileSpec.from_json(doc, "uint16") == SPEC
    for key, bad in [("version", "2.0"), ("tile", [16, 16]), ("range", [5, 5]),
                     ("quant", ["int9", 0, 1]), ("model", [1, 3, 30]), ("experts", 0)]:  # fmt: skip
        with pytest.raises(MoecFormatError):
            TileSpec.from_json({**doc, key: bad}, "uint16")
    with pytest.raises(MoecFormatError):
        TileSpec.from_json({**doc, "extra": 1}, "uint16")
    with pytest.raises(MoecFormatError):
        TileSpec.from_json(doc, "int64")


def test_tile_stream_layout_and_overhead():
    chunk = network_chunk(SPEC, (2, 1, 0), hidden=6, experts=2)
    tile = parse_tile(SPEC, chunk, expected_index=(2, 1, 0))
    assert tile.index == (2, 1, 0) and tile.model == SPEC.model_config(6, 2)
    # kind + 3 index bytes + width + experts + CRC: 10 bytes of a 3D network tile
    assert len(chunk) - len(tile.payload) == network_overhead(SPEC, (2, 1, 0), 6, 2) == 10
    assert chunk[:6] == bytes([2, 2, 1, 0, 6, 2])
    assert int.from_bytes(chunk[-4:], "little") == zlib.crc32(chunk[:-4])
    constant = encode_constant_tile(SPEC, (0, 2, 1), 1234)
    assert constant == bytes([1, 0, 2, 1]) + (1234).to_bytes(2, "little") + constant[-4:]
    assert parse_tile(SPEC, constant).value == 1234


def test_plain_zarr_reads_the_store_and_partial_reads_match(store):
    array = zarr.open_array(store / "0", mode="r")
    full = array[:]
    assert full.shape == SPEC.grid.shape and full.dtype == np.uint16
    assert (full[:16, :16, :16] == 100).all()  # absent chunk: fill value
    assert (full[16:32, 16:32, 16:32] == 1234).all()  # constant tile
    assert full.min() >= 100 and full.max() <= 4000  # clipped to the stored range
    assert np.array_equal(array[3:30:4, 5, 1::3], full[3:30:4, 5, 1::3])
    assert np.array_equal(array.oindex[[1, 17, 39], :, [0, 20, 35]],
                          full[[1, 17, 39]][:, :, [0, 20, 35]])  # fmt: skip
    lazy = open_tiled(store)
    assert np.array_equal(lazy.decode(), full)
    strided = lazy.decode(stride=(2, 3, 4))
    assert np.abs(strided.astype(int) - full[::2, ::3, ::4]).max() <= 1  # float last bits


def test_region_reads_decode_only_the_tiles_they_touch(store):
    array = zarr.open_array(store / "0", mode="r")
    DECODE_COUNTS.clear()
    array[20:30, 2:10, 20:30]  # inside tile (1, 0, 1)
    assert sum(DECODE_COUNTS.values()) == 1
    DECODE_COUNTS.clear()
    array[10:20, 10:20, 2:5]  # tiles (0|1, 0|1, 0): 4 tiles, (0, 0, 0) absent, (1,1,0) network
    assert sum(DECODE_COUNTS.values()) == 3
    DECODE_COUNTS.clear()
    open_tiled(store).decode(roi="20:30,2:10,20:40")  # tiles (1, 0, 1) and (1, 0, 2)
    assert sum(DECODE_COUNTS.values()) == 2


def test_labels_are_distinct_across_tiles(store):
    labels = open_tiled(store).expert_labels()
    assert labels.dtype == np.uint32
    assert (labels[:16, :16, :16] == 0).all() and (labels[16:32, 16:32, 16:32] == 0).all()
    ids = {}
    for index in SPEC.grid.indices():
        values = np.unique(labels[SPEC.grid.tile_slices(index)])
        for v in values[values > 0]:
            assert ids.setdefault(int(v), index) == index  # one tile per id
            assert (int(v) - 1) // SPEC.networks.experts == SPEC.grid.flat(index)


def test_assigning_through_zarr_is_refused(store):
    array = zarr.open_array(store / "0", mode="r+")
    with pytest.raises(MoecFormatError, match="compress_tiled"):
        array[:16, :16, :16] = 5


def test_swapped_and_truncated_chunks_name_the_chunk(store):
    a, b = chunk_path(store, (0, 0, 1)), chunk_path(store, (0, 0, 2))
    a.write_bytes(b.read_bytes())
    array = zarr.open_array(store / "0", mode="r")
    with pytest.raises(MoecFormatError, match=r"0/c/0/0/1: holds tile \(0, 0, 2\)"):
        array[0:4, 0:4, 16:20]
    b.write_bytes(b.read_bytes()[:-3])
    with pytest.raises(MoecFormatError, match="0/c/0/0/2: checksum mismatch"):
        array[0:4, 0:4, 32:36]


def _read_hostile(store, data: bytes):
    """Put ``data`` at chunk (0, 1, 2) and read it through plain zarr."""
    chunk_path(store, (0, 1, 2)).write_bytes(data)
    try:
        zarr.open_array(store / "0", mode="r")[0:16, 16:32, 32:36]
    except MoecFormatError as exc:
        assert "0/c/0/1/2" in str(exc)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_fuzz_codec_with_mutated_chunks(store, data):
    """Flipped, cut or appended bytes: a MoecFormatError naming the chunk, never a crash."""
    chunk = bytearray(network_chunk(SPEC, (0, 1, 2), hidden=5))
    action = data.draw(st.sampled_from(["flip", "truncate", "append"]))
    if action == "flip":
        pos = data.draw(st.integers(0, len(chunk) - 1))
        chunk[pos] ^= data.draw(st.integers(1, 255))
    elif action == "truncate":
        chunk = chunk[: data.draw(st.integers(0, len(chunk) - 1))]
    else:
        chunk += data.draw(st.binary(min_size=1, max_size=16))
    with pytest.raises(MoecFormatError, match="0/c/0/1/2"):
        chunk_path(store, (0, 1, 2)).write_bytes(bytes(chunk))
        zarr.open_array(store / "0", mode="r")[0:16, 16:32, 32:36]


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    body=st.binary(max_size=120), head=st.sampled_from([b"\x01\x00\x01\x02", b"\x02\x00\x01\x02"])
)
def test_fuzz_codec_with_hostile_bodies_behind_valid_crcs(store, body, head):
    """Bytes that pass the CRC but hold anything (huge widths, short payloads, bad varints):
    decoded or rejected with MoecFormatError, never another exception or a huge allocation."""
    raw = head + body
    _read_hostile(store, raw + zlib.crc32(raw).to_bytes(4, "little"))


def test_hostile_widths_are_rejected_before_allocating(store):
    for body in (b"\x80\x80\x80\x80\x80\x01", b"\xff\x7f\x02", b"\x05\x7f"):
        raw = b"\x02\x00\x01\x02" + body
        with pytest.raises(MoecFormatError, match="0/c/0/1/2"):
            chunk_path(store, (0, 1, 2)).write_bytes(raw + zlib.crc32(raw).to_bytes(4, "little"))
            zarr.open_array(store / "0", mode="r")[0:16, 16:32, 32:36]


def test_chunk_keys():
    assert chunk_index_from_key("0/c/1/22/3") == (1, 22, 3)
    assert chunk_index_from_key("c.4.5.6") == (4, 5, 6)
    assert chunk_index_from_key("0/zarr.json") is None


def test_decode_tile_edge_chunk_fills_outside_the_volume():
    data = network_chunk(SPEC, (2, 2, 2))  # voxels 32:40, 32:36, 32:36 of a 16^3 chunk
    values = decode_tile(SPEC, data, [np.arange(16)] * 3, fill_value=7)
    assert (values[8:] == 7).all() and (values[:, 4:] == 7).all()
    assert (values[:8, :4, :4] >= 100).all()


# -- planning pieces ---------------------------------------------------------------------------
def test_scan_statistics_and_probe():
    rng = np.random.default_rng(0)
    smooth = np.add.outer(0.1 * np.arange(16.0), np.zeros((16, 16))).astype(np.float32)
    noisy = smooth + rng.normal(0, 3, smooth.shape).astype(np.float32)
    f = probe_factor(256)
    assert f == 6
    assert tile_stats((0, 0, 0), noisy, f).probe > 10 * tile_stats((0, 0, 0), smooth, f).probe
    constant = tile_stats((0, 0, 0), np.full((4, 4, 4), 3, np.uint16), f)
    assert constant.constant and constant.probe == 0
    bad = smooth.copy()
    bad[1, 2, 3] = np.nan
    assert not tile_stats((0, 0, 0), bad, f).finite


def _stats(probes, voxels=16**3):
    spec = TileSpec(TileGrid((16, 16, 16 * len(probes)), (16, 16, 16), (0, 0, 0)),
                    TileValues("uint16", 0, 1000), TileNetworks(QuantConfig()))  # fmt: skip
    stats = []
    for k, p in enumerate(probes):
        lo, hi = (5.0, 5.0) if p is None else (0.0, 1000.0)
        from napari_moec.tiled.scan import TileStats

        stats.append(TileStats((0, 0, k), voxels, lo, hi, True, 0.0 if p is None else p))
    return spec, stats


def test_allocation_follows_difficulty_and_keeps_the_budget():
    spec, stats = _stats([1.0, 100.0, 10000.0, None])
    equal = allocate(spec, stats, 6000, mode="equal")
    hard = allocate(spec, stats, 6000, mode="difficulty")
    shares = [t.payload_budget for t in hard.tiles[:3]]
    assert shares[0] < shares[1] < shares[2]
    assert len({t.payload_budget for t in equal.tiles[:3]}) == 1
    for a in (equal, hard):
        assert a.tiles[3].kind == "empty" and a.fill_value == 5
        assert a.payload_bytes + a.fixed_bytes <= 6000
    uniform = allocate(spec, stats, 6000, mode="uniform")
    assert len({t.payload_budget for t in uniform.tiles[:3]}) == 1
    assert uniform.tiles[0].payload_budget < equal.tiles[0].payload_budget  # 1/4 left unused
    with pytest.raises(ConfigError, match="use larger tiles or a lower ratio"):
        allocate(spec, stats, 40)


def test_fill_value_is_the_commonest_constant():
    _, stats = _stats([None, None, 3.0])
    assert choose_fill(stats, "uint16") == 5


@settings(max_examples=300, deadline=None)
@given(n=st.integers(1, 5000), edge=st.sampled_from([32, 48, 64, 96, 128, 192, 256]))
def test_auto_tiles_split_an_axis_evenly(n, edge):
    """An "auto" axis keeps the tile count its edge gives, in aligned tiles whose sizes differ
    by less than one alignment step more than an exact split would."""
    size = balanced_edge(n, edge)
    count = math.ceil(n / edge)
    assert math.ceil(n / size) == count  # no more tiles than the edge makes
    assert size <= edge
    if n <= edge:
        assert size == n
    else:
        assert size % ALIGN == 0
        last = n - (count - 1) * size
        assert 0 < last <= size
        assert size - n / count < ALIGN  # as even as the alignment allows


def test_tile_and_margin_choices():
    """ "auto" follows the family's policy (SIREN's ~4 kB a tile here); given sizes pass
    through, clipped to the volume."""
    siren = SIREN_TILES
    assert choose_tile((512, 512, 512), "uint16", 256, policy=siren) == (96, 96, 96)
    assert choose_tile((512, 512, 512), "uint16", 16, policy=siren) == (32, 32, 32)
    assert choose_tile((40, 512, 512), "float32", 64, 48, policy=siren) == (40, 48, 48)
    assert choose_tile((3, 40, 512, 512), "uint16", 64, 32, policy=siren) == (3, 32, 32, 32)
    assert choose_margin((64, 64, 64), policy=siren) == (8, 8, 8)
    assert choose_margin((3, 16, 16, 16), policy=siren) == (0, 2, 2, 2)
    assert choose_margin((3, 32, 32, 32), 3, policy=siren) == (0, 3, 3, 3)
    grid = GRID_TILES  # ~32 kB a tile: a grid tile's cost is per latent (GRID_TILES)
    assert choose_tile((512, 512, 512), "float32", 256, policy=grid) == (128, 128, 128)
    # 512 = 3 tiles of 192 would leave a 128 remnant: 176, 176, 160 (balanced_edge)
    assert choose_tile((512, 512, 512), "uint16", 256, policy=grid) == (176, 176, 176)
    assert choose_tile((512, 512, 512), "float32", 1024, policy=grid) == (256, 256, 256)
    assert choose_tile((128, 206, 168), "float32", 6000, policy=grid) == (128, 206, 168)
    # the macaque at 256x: 206 and 168 as 112 + 94 and 96 + 72, not 128 + 78 and 128 + 40
    assert choose_tile((128, 206, 168), "float32", 256, policy=grid) == (128, 112, 96)
    assert choose_margin((128, 128, 128), policy=grid) == (0, 0, 0)  # (GRID_TILES)
    assert choose_margin((8, 128, 128, 128), policy=grid) == (0, 0, 0, 0)
    with pytest.raises(ConfigError):
        choose_tile((64, 64, 64), "uint16", 16, "big", policy=siren)
    with pytest.raises(ConfigError):
        choose_margin((64, 64, 64), -1, policy=siren)
