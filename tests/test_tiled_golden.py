"""Golden tiled stores of tile stream 1.0 (SIREN) and 1.1 (grid), written by the code before
stream 1.2 (a bound) existed (tests/data/make_golden_tiled.py): a store without a bound is still
read, and written, byte for byte as before."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import zarr

from napari_moec.tiled.store import chunk_path, metadata_documents
from napari_moec.tiled.tileformat import TileSpec, encode_network_tile, parse_tile

from .data.make_golden_tiled import CONSTANT, network_chunk, specs

GOLDEN = Path(__file__).parent / "data" / "golden_tiled"


def _config(root: Path) -> dict:
    meta = json.loads((root / "0" / "zarr.json").read_text())
    (codec,) = meta["codecs"]
    return codec["configuration"]


@pytest.mark.parametrize("name", ["siren", "grid"])
def test_old_stores_decode_as_before(name):
    root = GOLDEN / f"{name}.ome.zarr"
    decoded = zarr.open_array(root / "0", mode="r")[:]
    reference = np.load(GOLDEN / f"{name}_decoded.npy")
    assert decoded.dtype == reference.dtype and decoded.shape == reference.shape
    assert len(np.unique(reference)) > 100  # networks, not a constant
    # Float kernels may round a level apart on another CPU; on the machine that made them the
    # decode is exact (as for the .moec golden files).
    assert np.abs(decoded.astype(int) - reference).max() <= 1
    assert np.mean(decoded == reference) > 0.99


@pytest.mark.parametrize("name", ["siren", "grid"])
def test_a_store_without_a_bound_writes_the_bytes_it_wrote_before(name):
    root = GOLDEN / f"{name}.ome.zarr"
    spec = specs()[name]
    config = _config(root)
    assert config == spec.to_json() and "bound" not in config
    assert config["version"] == ("1.0" if name == "siren" else "1.1")
    assert TileSpec.from_json(config, "uint16") == spec and not spec.values.bounded
    docs = metadata_documents(spec, axes="ZYX", spacing=None, unit=None, fill_value=100,
                              name=name, extra={"ratio": 16})  # fmt: skip
    for key, data in docs.items():
        assert (root / key).read_bytes() == data, key
    for index in spec.grid.indices():
        stored = chunk_path(root, index).read_bytes()
        tile = parse_tile(spec, stored, expected_index=index)
        assert tile.correction is None and tile.correction_nbytes == 0
        if index == CONSTANT:
            continue
        # The framing of today's writer around the same payload, and the whole chunk rebuilt
        # from the same seeds, are the committed bytes.
        assert encode_network_tile(spec, index, tile.model, tile.payload) == stored
        assert network_chunk(spec, index) == stored
