"""Lazy reading for napari: tiled stores (folders and .ozx) and big .moec files open as
multiscale layers that decode only what is asked for; the lazy arrays index like numpy; the
streaming comparison gives the whole-volume PSNR and SSIM.

The store is built once per module on a LocalCluster of 2 one-thread workers (16³ tiles, a few
training steps: CI-sized; quality is irrelevant here).
"""

from __future__ import annotations

import numpy as np
import pytest

import napari_moec
from napari_moec import TrainConfig, open_tiled
from napari_moec._napari.layers import EXPERT_OFFSET, layer_names
from napari_moec._napari.lazy import CACHE, DecodedCache, LazyVolume, pyramid
from napari_moec._napari.lazy_blocks import DECODED_BLOCKS, MoecBlocks, TiledBlocks
from napari_moec._napari.reader import (
    napari_get_reader,
    napari_get_tiled_reader,
    read_moec,
    store_name,
)
from napari_moec._napari.stream_compare import CompareProgress, stream_compare
from napari_moec.metrics import psnr, ssim
from napari_moec.tiled.store import pack_ozx
from napari_moec.tiled.tiledecode import DECODE_COUNTS

from .conftest import smooth_volume

distributed = pytest.importorskip("distributed")

SHAPE = (40, 44, 36)  # 3 x 3 x 3 tiles of 16, edge tiles partial on every axis
TRAIN = TrainConfig(steps=20, batch_size=1024, report_every=5)


@pytest.fixture(scope="module")
def volume():
    return smooth_volume(SHAPE, seed=3)


@pytest.fixture(scope="module")
def store_path(volume, tmp_path_factory):
    dest = tmp_path_factory.mktemp("tiled") / "vol.ome.zarr"
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
        memory_limit="2GiB",
    ) as cluster, distributed.Client(cluster) as client:  # fmt: skip
        napari_moec.compress_tiled(volume, dest, 16, tile=16, margin=2, train=TRAIN,
                                   arch=napari_moec.ArchConfig(model="siren"),
                                   client=client, progress=False, spacing=(2.0, 1.0, 1.0),
                                   unit="um")  # fmt: skip
    return dest


@pytest.fixture(scope="module")
def ozx_path(store_path):
    dest = store_path.with_name("vol.ozx")
    pack_ozx(store_path, dest)
    return dest


@pytest.fixture(scope="module")
def moec_file(volume, tmp_path_factory):
    compressed = napari_moec.compress(volume, 32, num_experts=2, spacing=(2.0, 1.0, 1.0),
                                      train=TRAIN)  # fmt: skip
    return compressed.save(tmp_path_factory.mktemp("moec") / "vol.moec")


def test_tiled_reader_claims_only_tiled_stores(store_path, ozx_path, moec_file, tmp_path):
    assert napari_get_tiled_reader(str(store_path)) is not None
    assert napari_get_tiled_reader(str(ozx_path)) is not None
    assert napari_get_tiled_reader([str(store_path), str(ozx_path)]) is not None
    import zarr

    plain = tmp_path / "plain.zarr"
    zarr.create_array(plain, shape=(4, 4, 4), dtype="uint8")
    assert napari_get_tiled_reader(str(plain)) is None  # another plugin's (napari-ome-zarr)
    fake = tmp_path / "fake.ozx"
    fake.write_bytes(b"not a zip")
    assert napari_get_tiled_reader(str(fake)) is None
    assert napari_get_tiled_reader(str(moec_file)) is None
    assert napari_get_reader(str(store_path)) is None  # the .moec reader stays for .moec
    assert store_name("a.ome.zarr") == store_name("a.ozx") == store_name("a.zarr") == "a"


@pytest.mark.parametrize("which", ["folder", "ozx"])
def test_opening_a_store_decodes_nothing_then_only_the_tiles_shown(which, store_path, ozx_path):
    path = store_path if which == "folder" else ozx_path
    CACHE.clear()
    DECODE_COUNTS.clear()
    reader = napari_get_tiled_reader(str(path))
    (image, image_meta, kind), (labels, labels_meta, labels_kind) = reader(str(path))
    assert (kind, labels_kind) == ("image", "labels")
    assert sum(DECODE_COUNTS.values()) == 0, "opening must not decode"
    assert image_meta["multiscale"] and labels_meta["multiscale"]
    assert (image_meta["name"], labels_meta["name"]) == layer_names("vol")[:2]
    assert image_meta["scale"] == (2.0, 1.0, 1.0) and image_meta["units"] == "micrometer"
    store = open_tiled(path)
    assert image_meta["contrast_limits"] == (store.spec.values.vmin, store.spec.values.vmax)
    assert [lv.shape for lv in image] == [SHAPE, (20, 22, 18)]  # until <= 64 a side, >= 2
    assert image[0].chunks == ((16, 16, 8), (16, 16, 12), (16, 16, 4))  # napari reads tiles
    assert image[1].chunks[0] == (8, 8, 4)
    plane = np.asarray(image[0][20])  # z = 20: the 9 tiles of z-row 1
    assert sum(DECODE_COUNTS.values()) == 9
    np.testing.assert_array_equal(plane, store.decode()[20])
    DECODE_COUNTS.clear()
    np.asarray(labels[0][20])  # same voxels: one network pass gave both, cached
    assert sum(DECODE_COUNTS.values()) == 0
    np.testing.assert_array_equal(labels[0][20], store.expert_labels()[20])
    np.testing.assert_array_equal(np.asarray(image[1]), store.decode(stride=2))


def test_lazy_volume_indexes_like_numpy(store_path):
    store = open_tiled(store_path)
    whole = store.decode()
    lazy = LazyVolume(TiledBlocks(store))
    for key in [
        (5,),
        (slice(3, 30, 4), slice(None), -1),
        (Ellipsis, slice(10, 2, -3)),
        (slice(None, None, -1), 7, slice(30, 35)),
        (-1, -2, -3),
    ]:
        expected = whole[key]
        got = lazy[key]
        got = np.asarray(got) if isinstance(got, LazyVolume) else got
        np.testing.assert_array_equal(got, expected, err_msg=repr(key))
    assert lazy[2:9][1:3, ::2].shape == whole[2:9][1:3, ::2].shape
    assert lazy[4:6].block_indices() == {(0, y, x) for y in range(3) for x in range(3)}
    with pytest.raises(IndexError):
        lazy[40]
    with pytest.raises(TypeError):
        lazy[[1, 2]]


def test_cache_is_bounded_by_bytes():
    cache = DecodedCache(max_bytes=100)
    for i in range(5):
        cache.put(("k", i), i, 40)
    assert len(cache) == 2 and cache.nbytes == 80
    assert cache.get(("k", 0)) is None and cache.get(("k", 4)) == 4
    cache.put(("big",), 0, 101)  # larger than the budget: not kept
    assert cache.get(("big",)) is None


def test_big_moec_opens_lazily(moec_file, monkeypatch):
    compressed = napari_moec.load(moec_file)
    _, eager = read_moec(moec_file)
    assert not eager[0][1].get("multiscale")  # small: decoded whole, as before
    DECODED_BLOCKS.clear()
    _, layers = read_moec(moec_file, lazy=True)
    (image, meta, _), (labels, _, _) = layers
    assert meta["multiscale"] and DECODED_BLOCKS["moec"] == 0
    assert meta["contrast_limits"] == (compressed.header.vmin, compressed.header.vmax)
    np.testing.assert_array_equal(np.asarray(image[0][:, 10]), compressed.decode()[:, 10])
    assert DECODED_BLOCKS["moec"] == 1  # one 64³ block holds the whole 40x44x36 volume
    np.testing.assert_array_equal(
        np.asarray(labels[0][5, ::3]), compressed.expert_labels()[5, ::3] + EXPERT_OFFSET
    )
    import napari_moec._napari.reader as reader

    monkeypatch.setattr(reader, "LAZY_VOXELS", 1000)  # a "big" file: the reader goes lazy
    assert reader.reader_function(str(moec_file))[0][1]["multiscale"]


def _drain(gen):
    events = []
    while True:
        try:
            events.append(next(gen))
        except StopIteration as done:
            return events, done.value


def test_stream_compare_equals_whole_volume_metrics(store_path, volume, moec_file):
    store = open_tiled(store_path)
    decoded = store.decode()
    span = store.spec.values.vmax - store.spec.values.vmin
    events, result = _drain(stream_compare(volume, TiledBlocks(store), span))
    assert isinstance(events[-1], CompareProgress) and events[-1].done == events[-1].total
    assert result.psnr == pytest.approx(psnr(volume, decoded), rel=1e-9)
    assert result.ssim == pytest.approx(ssim(volume, decoded), rel=1e-9)
    diff = decoded.astype(np.float32) - volume.astype(np.float32)
    assert result.max_abs == pytest.approx(float(np.abs(diff).max()))
    np.testing.assert_array_equal(np.asarray(result.difference[0][7]), diff[7])
    assert [lv.shape for lv in result.difference] == [SHAPE, (20, 22, 18)]

    compressed = napari_moec.load(moec_file)  # a single file, its 64³ blocks cut to 16³ parts
    blocks = MoecBlocks(compressed, block=16)
    span = compressed.header.vmax - compressed.header.vmin
    _, result = _drain(stream_compare(volume, blocks, span))
    whole = compressed.decode()
    # A 16³ region's float decode may round differently in the last bit from the whole
    # volume's (BLAS picks its tiling by size), which can move a voxel by one level in the
    # dtype: a few voxels of 63,360 at most, 1e-8 of the PSNR.
    assert result.psnr == pytest.approx(psnr(volume, whole), rel=1e-6)
    assert result.ssim == pytest.approx(ssim(volume, whole), rel=1e-6)


def test_pyramid_levels_are_strided_decodes(moec_file):
    compressed = napari_moec.load(moec_file)
    levels = pyramid(MoecBlocks(compressed), smallest=11)
    assert [lv.shape for lv in levels] == [(40, 44, 36), (20, 22, 18), (10, 11, 9)]
    np.testing.assert_array_equal(np.asarray(levels[2]), compressed.decode(stride=4))
    labels = pyramid(MoecBlocks(compressed), labels=True, smallest=11)
    np.testing.assert_array_equal(
        np.asarray(labels[1]), compressed.expert_labels(stride=2) + EXPERT_OFFSET
    )
