"""One tile of the 512³ macaque mirror store, trained alone by the grid trainer.

Session 21 found the 512³ store's four corner tiles at y = 3 (128³ tiles, 16-voxel margins)
4 dB worse than in session 20 and traced it here: the tile's region, normalised by the whole
volume's range, its decoded box and its payload budget as the store gave them, trained for a
number of steps on one thread, and the payload decoded over the tile. Prints one JSON line
and the trainer's checkpoint history (bytes, latents zeroed to fit, lam)::

    python research/tile_alone.py 2551 0,3,0 37246      # the store's steps for that tile
    python research/tile_alone.py 3000 0,3,0 37246

Run from ``benchmarks/`` with the library on ``PYTHONPATH``; results in
docs/benchmarks/notes.md (session 21).
"""

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from _common import load_volume
from napari_moec.families.grid.decode import decode_region, model_from_payload
from napari_moec.families.grid.payload import unpack_payload
from napari_moec.families.grid.sizing import auto_config
from napari_moec.families.grid.train import GridTrainer, TrainSettings
from napari_moec.generators import drain
from napari_moec.sampling import Normalization
from tiled import _mirror_index  # the store's mirroring (benchmarks/tiled.py), not a copy

SIZE, TILE, MARGIN = 512, 128, 16


def tile_target(tile: tuple[int, ...]) -> tuple[np.ndarray, tuple[tuple[int, int], ...]]:
    """(the tile's region normalised as the store normalises it, the tile's box in it)."""
    source = load_volume("macaque")
    index = [_mirror_index(SIZE, n) for n in source.shape]
    region = [slice(max(0, c * TILE - MARGIN), min(SIZE, (c + 1) * TILE + MARGIN)) for c in tile]
    box = tuple(
        (c * TILE - r.start, (c + 1) * TILE - r.start) for c, r in zip(tile, region, strict=True)
    )
    values = source[np.ix_(*(i[r] for i, r in zip(index, region, strict=True)))].astype(np.float32)
    return Normalization.of(source).apply(values), box  # the mirror has the source's values


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("steps", type=int)
    ap.add_argument("tile", help="tile index, e.g. 0,3,0")
    ap.add_argument("budget", type=int, help="the tile's payload budget (bytes)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    tile = tuple(int(c) for c in args.tile.split(","))
    target, box = tile_target(tile)
    cfg = auto_config(target.shape, args.budget)
    t0 = time.process_time()
    trainer = GridTrainer(target, cfg, args.budget, TrainSettings(steps=args.steps), decoded=box)
    best = drain(trainer.run())
    decoded, _ = decode_region(model_from_payload(unpack_payload(best.payload, cfg)))
    cut = tuple(slice(a, b) for a, b in box)
    mse = float(np.mean((decoded[cut].astype(np.float64) - target[cut]) ** 2))
    row = {
        "steps": args.steps,
        "tile": tile,
        "latents": cfg.latent_count,
        "bytes": len(best.payload),
        "budget": args.budget,
        "psnr": round(10 * np.log10(4.0 / mse), 3),  # the normalised range is [-1, 1]
        "cpu_s": round(time.process_time() - t0, 1),
    }
    print(json.dumps(row), flush=True)
    for h in trainer.history:
        print(json.dumps(h), flush=True)


if __name__ == "__main__":
    main()
