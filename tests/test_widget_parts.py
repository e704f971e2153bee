"""The dock widget's parts that need no viewer: the run request and the tiled stores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("napari")

import dask.array as da
from napari.layers import Image

from napari_moec.config import OPTION_CONFIGS
from napari_moec.errors import ConfigError
from napari_moec.run_options import configs_from_options

pytestmark = pytest.mark.gui


def _settings():
    return {"ratio": 64.0, **configs_from_options({"steps": 9})}


def _tiled(mode="auto"):
    return {"mode": mode, "tile": None, "workers": None, "scheduler": None}


def test_request_reads_the_layer_once_with_its_physical_metadata():
    from napari_moec._napari.widget_request import make_request

    layer = Image(np.zeros((4, 5, 6), np.uint16), name="v", scale=(2, 1, 1))
    request = make_request([layer], "v", _settings, _tiled)
    assert request.layer is layer and request.shape == (4, 5, 6)
    assert request.spacing == (2.0, 1.0, 1.0) and request.ratio == 64.0
    assert request.train.steps == 9 and set(request.configs) == set(OPTION_CONFIGS)
    assert not request.tiled_mode
    assert make_request([layer], "v", _settings, lambda: _tiled("tiled")).tiled_mode
    with pytest.raises(AttributeError):
        request.ratio = 2  # frozen: a run gets what Start read


def test_a_lazy_layer_is_tiled_and_a_missing_source_is_said_before_settings():
    from napari_moec._napari.widget_request import make_request

    lazy = Image(da.zeros((8, 8, 8), dtype=np.uint16, chunks=4), name="lazy")
    assert make_request([lazy], "lazy", _settings, _tiled).tiled_mode

    def bad_settings():
        raise ConfigError("ratio 'x' is not a number")

    flat = Image(np.zeros((8, 8), np.uint16), name="flat")
    with pytest.raises(ConfigError, match="'flat' is 2D"):
        make_request([flat], "flat", bad_settings, _tiled)


def test_a_stopped_store_is_resumed_while_its_folder_is_there():
    from napari_moec._napari.widget_tiled import TiledStores

    stores = TiledStores()
    key = ("volume", "settings")
    first = stores.dest(key, "my layer")
    assert first.endswith(".ozx") and "my_layer" in Path(first).name
    Path(first + ".partial").mkdir()  # what the run writes while it runs
    stores.ended(key, first, stopped=True)
    assert stores.dest(key, "my layer") == first  # Start again: the same store, resumed
    Path(first + ".partial").rmdir()  # the folder is gone: nothing to resume
    Path(first).touch()
    assert stores.dest(key, "my layer") != first
    stores.ended(key, first, stopped=False)  # finished: a new run writes a new store
    assert stores.dest(key, "my layer") != first
