"""How many of a grid tile's payload bytes hold latents that no voxel of the tile reads.

A grid tile is trained on its region (the tile plus a margin) and stores the region's latent
grids; only the tile's voxels are decoded, and the cubic B-spline reads 4 nodes an axis, so
latents whose support misses the tile are stored for nothing. This script reads every grid tile
of a store, zeroes those latents, packs the payload again (same network, same latent step) and
reports the bytes against the stored ones: the size of the lever "store only the latents whose
support reaches the tile" (docs/tiled.md), measured without retraining. Stores written since
session 20 already store those latents as 0 (``LatentGrids.stored``): they measure ~0. The
decoded tile is unchanged by construction (checked here on every tile). Light: no training.

    python benchmarks/tile_margin_latents.py /tmp/moec-tiled-bench/STORE.ome.zarr
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from napari_moec.families.grid.decode import decode_region, model_from_payload
from napari_moec.families.grid.interp import support_box
from napari_moec.families.grid.payload import pack_payload, unpack_payload
from napari_moec.tiled.reader import open_tiled
from napari_moec.tiled.store import chunk_path
from napari_moec.tiled.tileformat import parse_tile


def support_masks(cfg, box) -> list[np.ndarray]:
    """Per level, the latents read by some voxel of ``box`` (one (start, stop) per axis): the
    node box :func:`~napari_moec.families.grid.interp.support_box` finds, as a mask."""
    masks = []
    for g in cfg.grid_shapes:
        mask = np.zeros(g, bool)
        mask[support_box(cfg.shape, g, cfg.kernel, box)] = True
        masks.append(mask)
    return masks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("store")
    args = ap.parse_args()
    store = open_tiled(args.store)
    spec = store.spec
    rows = []
    for index in spec.grid.indices():
        path = chunk_path(Path(args.store), index)
        if not path.exists():
            continue
        tile = parse_tile(spec, path.read_bytes(), expected_index=index)
        if tile.payload is None or not hasattr(tile.model, "grid_shapes"):
            continue
        cfg = tile.model
        p = unpack_payload(tile.payload, cfg)
        box = [(s.start, s.stop) for s in spec.grid.tile_in_region(index)]
        masks = support_masks(cfg, box)
        kept = [np.where(m, q, 0) for m, q in zip(masks, p.latents, strict=True)]
        repacked = pack_payload(cfg, kept, list(p.weights), list(p.scales), p.latent_step)
        roi = [(a, b, 1) for a, b in box]
        before, _ = decode_region(model_from_payload(p, "cpu"), roi)
        after, _ = decode_region(model_from_payload(unpack_payload(repacked, cfg), "cpu"), roi)
        assert np.array_equal(before, after), index  # the tile decodes the same
        share = [float(m.mean()) for m in masks]
        nonzero = sum(int((q != 0).sum()) for q in p.latents)
        nonzero_kept = sum(int((q != 0).sum()) for q in kept)
        rows.append({
            "index": list(index), "payload": len(tile.payload), "repacked": len(repacked),
            "saved_share": 1 - len(repacked) / len(tile.payload),
            "finest_level_read_share": share[0], "nonzero_latents": nonzero,
            "nonzero_read": nonzero_kept, "first_level": cfg.first_level,
        })  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    total, again = sum(r["payload"] for r in rows), sum(r["repacked"] for r in rows)
    print(json.dumps({"tiles": len(rows), "payload_bytes": total, "repacked_bytes": again,
                      "saved_share": 1 - again / total}))  # fmt: skip


if __name__ == "__main__":
    torch.set_num_threads(1)
    sys.exit(main())
