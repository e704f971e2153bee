"""The ``.moec`` reader: claims only our files, gives the same arrays as the library API."""

from __future__ import annotations

import numpy as np
import pytest

import napari_moec
from napari_moec import MoecFormatError, TrainConfig
from napari_moec._napari.layers import EXPERT_OFFSET, layer_names
from napari_moec._napari.reader import napari_get_reader
from napari_moec._napari.sample_data import CT_HEAD_SPACING, ct_head
from napari_moec.format import MAGIC


@pytest.fixture(scope="module")
def moec_file(tmp_path_factory):
    """A tiny real file: a 24³ block of the head CT, 32x, a few steps (quality is irrelevant)."""
    block = ct_head()[40:64, 20:44, 20:44]
    compressed = napari_moec.compress(
        block,
        16,  # 1.7 KB: roomy enough to store the training summary (with its PSNR)
        num_experts=2,
        spacing=CT_HEAD_SPACING,
        unit="mm",
        train=TrainConfig(steps=8, batch_size=1024, report_every=4),
    )
    return compressed.save(tmp_path_factory.mktemp("moec") / "block.moec")


def test_reader_gives_image_and_labels_like_the_api(moec_file):
    reader = napari_get_reader(str(moec_file))
    assert callable(reader)
    (image, image_meta, image_kind), (labels, labels_meta, labels_kind) = reader(str(moec_file))
    loaded = napari_moec.load(moec_file)
    assert (image_kind, labels_kind) == ("image", "labels")
    np.testing.assert_array_equal(image, loaded.decode())
    np.testing.assert_array_equal(labels, loaded.expert_labels() + EXPERT_OFFSET)
    assert image.dtype == np.uint16 and image.shape == (24, 24, 24)
    assert (image_meta["name"], labels_meta["name"]) == layer_names("block")[:2]
    assert image_meta["scale"] == CT_HEAD_SPACING == labels_meta["scale"]
    meta = image_meta["metadata"]
    assert meta["moec_ratio"] == pytest.approx(loaded.ratio, abs=0.01) and meta["moec_ratio"] >= 16
    assert meta["moec_experts"] == 2
    assert meta["moec_psnr"] == loaded.header.train.psnr
    assert meta["moec_info"]["shape"] == [24, 24, 24]


def test_reader_declines_other_files(tmp_path, moec_file):
    other = tmp_path / "x.tif"
    other.write_bytes(b"II*\x00" + bytes(100))
    assert napari_get_reader(str(other)) is None
    renamed = tmp_path / "x.moec"
    renamed.write_bytes(b"not a moec file at all")
    assert napari_get_reader(str(renamed)) is None
    wrong_suffix = tmp_path / "block.bin"
    wrong_suffix.write_bytes(moec_file.read_bytes())
    assert napari_get_reader(str(wrong_suffix)) is None
    assert napari_get_reader(str(tmp_path / "missing.moec")) is None


def test_broken_file_with_our_magic_raises(tmp_path, moec_file):
    broken = tmp_path / "broken.moec"
    broken.write_bytes(moec_file.read_bytes()[: len(MAGIC) + 20])
    reader = napari_get_reader(str(broken))
    assert reader is not None
    with pytest.raises(MoecFormatError):
        reader(str(broken))


@pytest.mark.gui
def test_viewer_opens_moec_with_the_plugin(make_napari_viewer, moec_file):
    pytest.importorskip("napari")
    viewer = make_napari_viewer()
    layers = viewer.open(str(moec_file), plugin="napari-moec")
    assert [layer.name for layer in layers] == list(layer_names("block")[:2])
    np.testing.assert_array_equal(layers[0].data, napari_moec.load(moec_file).decode())
    np.testing.assert_allclose(layers[0].scale, CT_HEAD_SPACING)
    assert type(layers[1]).__name__ == "Labels"
