"""The bundled sample: present, licensed, and opened by napari with its physical voxel size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import napari_moec
from napari_moec._napari.sample_data import CT_HEAD_SPACING, ct_head, ct_head_sample

DATA = Path(napari_moec.__file__).parent / "data"


def test_ct_head_is_the_vtk_headsq_volume():
    volume = ct_head()
    assert volume.shape == (93, 64, 64) and volume.dtype == np.uint16
    assert (int(volume.min()), int(volume.max())) == (0, 3926)


def test_sample_ships_with_its_licence():
    notice = (DATA / "LICENSE-ct_head.txt").read_text()
    assert "BSD" in notice and "Ken Martin" in notice and "pyvista/vtk-data" in notice
    assert not list(DATA.glob("hipct*")), "the HiP-CT block has no licence: never bundle it"


def test_sample_layer_data():
    [(data, meta, kind)] = ct_head_sample()
    assert kind == "image" and data.shape == (93, 64, 64)
    assert meta["scale"] == CT_HEAD_SPACING and meta["name"] == "ct_head"


@pytest.mark.gui
def test_open_sample_from_napari(make_napari_viewer):
    viewer = make_napari_viewer()
    layers = viewer.open_sample("napari-moec", "ct_head")
    assert layers[0].data.shape == (93, 64, 64)
    np.testing.assert_allclose(layers[0].scale, CT_HEAD_SPACING)
