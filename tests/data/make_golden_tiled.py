"""Regenerate the golden tiled stores of tile stream 1.0 (SIREN) and 1.1 (grid family): never,
unless deliberately changing those versions. They were written by the code *before* stream 1.2
(a bound) existed, so the tests prove that a store without a bound is still read and written
byte for byte as it was.

    PYTHONPATH=src python tests/data/make_golden_tiled.py

golden_tiled/siren.ome.zarr   20x18x16 uint16 in 16^3 tiles (margin 2): 3 SIREN network tiles
                              (seeded, untrained), 1 constant tile
golden_tiled/grid.ome.zarr    the same grid with grid-family tiles (seeded latents)
golden_tiled/*_decoded.npy    each store decoded whole through zarr; a decode may differ by 1
                              level elsewhere (float kernels round differently across CPUs)
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch
import zarr

HERE = Path(__file__).parent / "golden_tiled"
SHAPE, TILE, MARGIN = (20, 18, 16), (16, 16, 16), (2, 2, 2)
CONSTANT = (1, 1, 0)
BUDGET = 700


def specs():
    from napari_moec.config import QuantConfig
    from napari_moec.tiled.tileformat import TileGrid, TileNetworks, TileSpec, TileValues

    grid = TileGrid(SHAPE, TILE, MARGIN)
    values = TileValues("uint16", 100.0, 4000.0)
    quant = QuantConfig("int8", False, True)
    return {
        "siren": TileSpec(grid, values, TileNetworks(quant, experts=2)),
        "grid": TileSpec(grid, values, TileNetworks(quant, experts=2, family="grid")),
    }


def network_chunk(spec, index) -> bytes:
    """A seeded, untrained network of the spec's family (structure from seeded latents)."""
    from napari_moec import families
    from napari_moec.families.grid.family import GridOptions
    from napari_moec.families.siren.moe import MoESiren
    from napari_moec.format import pack_payload
    from napari_moec.tiled.tileformat import encode_network_tile
    from napari_moec.tiled.tilemodels import tile_model_config

    if spec.networks.siren:
        model = spec.model_config(6, 2)
        torch.manual_seed(sum(index))
        state = MoESiren(model).layout_state()
        return encode_network_tile(spec, index, model, pack_payload(model, spec.networks.quant,
                                                                    state))  # fmt: skip
    family = families.get("grid")
    # first_level pinned: the golden tiles were sized when the levels started at 1/2 (session
    # 12 lets the sizing start at the voxel lattice), and gate_hidden with the router 8 wide
    # (session 13 sizes routed models' gates 4 wide), and top-1 (session 15's "auto" top-k of
    # a routed grid model is 2), and the checkerboard context (session 24's default is the
    # coarse context, "cbc"); this pins the bytes, not the sizing
    options = GridOptions(num_experts=2, top_k=1, first_level=1, gate_hidden=8, context="cb")
    config = tile_model_config(spec, index, BUDGET, None, options)
    model = family.build(config, generator=torch.Generator().manual_seed(sum(index)))
    with torch.no_grad():
        for latents in model.grids.latents:
            latents.normal_(0, 2, generator=torch.Generator().manual_seed(sum(index)))
    payload = family.fit_payload(model, config, spec.networks.quant, BUDGET).payload
    return encode_network_tile(spec, index, config, payload)


def main() -> None:
    from napari_moec.tiled.store import chunk_path, metadata_documents, write_metadata
    from napari_moec.tiled.tileformat import encode_constant_tile

    for name, spec in specs().items():
        root = HERE / f"{name}.ome.zarr"
        shutil.rmtree(root, ignore_errors=True)
        docs = metadata_documents(spec, axes="ZYX", spacing=None, unit=None, fill_value=100,
                                  name=name, extra={"ratio": 16})  # fmt: skip
        write_metadata(root, docs)
        for index in spec.grid.indices():
            data = (encode_constant_tile(spec, index, 1234) if index == CONSTANT
                    else network_chunk(spec, index))  # fmt: skip
            path = chunk_path(root, index)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        decoded = zarr.open_array(root / "0", mode="r")[:]
        np.save(HERE / f"{name}_decoded.npy", decoded)
        print(root, decoded.shape, decoded.dtype, len(np.unique(decoded)))


if __name__ == "__main__":
    main()
