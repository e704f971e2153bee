"""How many voxels a grid training step should see, at equal CPU time.

Trains the grid family's trainer (one thread, its own checkpoints, the best kept) on a shared
volume at one ratio with ``max_voxels`` voxels a step (a strided subset when the volume is
larger) for ``steps`` steps, and prints one JSON line: PSNR of the best payload decoded from
its bytes, payload bytes, the process's CPU seconds and the checkpoint curve. Compare rows of
about equal ``cpu_s`` (the machine may be loaded: CPU seconds of a one-thread process are
what is compared, never wall time)::

    python benchmarks/grid_batch.py ct_head 256 6000 50000
    python benchmarks/grid_batch.py ct_head 256 1500 400000

Results and what they decided: ``napari_moec.families.grid.train`` ("Sampling") and
docs/benchmarks/notes.md.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from _common import load_volume, provenance
from napari_moec.families.grid.decode import decode_region, model_from_payload
from napari_moec.families.grid.payload import unpack_payload
from napari_moec.families.grid.sizing import auto_config
from napari_moec.families.grid.train import GridTrainer, TrainSettings
from napari_moec.generators import drain
from napari_moec.metrics import psnr
from napari_moec.sampling import Normalization


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("volume")
    ap.add_argument("ratio", type=float)
    ap.add_argument("steps", type=int)
    ap.add_argument("max_voxels", type=int)
    args = ap.parse_args()
    torch.set_num_threads(1)
    vol = load_volume(args.volume)
    norm = Normalization.of(vol)
    limit = int(vol.nbytes // args.ratio) - 60
    cfg = auto_config(vol.shape, limit)
    t0 = time.process_time()
    settings = TrainSettings(steps=args.steps, max_voxels=args.max_voxels)
    trainer = GridTrainer(norm.apply(vol), cfg, limit, settings)
    best = drain(trainer.run())
    values, _ = decode_region(model_from_payload(unpack_payload(best.payload, cfg)))
    row = {
        "volume": args.volume,
        "ratio": args.ratio,
        "max_voxels": args.max_voxels,
        "steps": args.steps,
        "psnr": round(psnr(vol, norm.invert(values, vol.dtype)), 3),
        "payload_bytes": len(best.payload),
        "cpu_s": round(time.process_time() - t0, 1),
        "checkpoints": [
            (h["step"], round(10 * np.log10(4 / h["mse"]), 2)) for h in trainer.history
        ],
        **provenance("cpu"),
    }
    print(json.dumps(row))


if __name__ == "__main__":
    main()
