"""A finished grid run's weights packed at latent steps around 1, each payload decoded whole.

Session 22 found a coarser latent step decoding *better* than the plain rounding at
checkpoints of the noise phase (``fit_over_budget.py``); this asks whether that holds at the
end of a run, after the rounding phase: train ``steps`` steps (one thread, the trainer's own
checkpoints and final choice), then pack the last weights at each step in ``STEPS`` and
print one JSON line: the kept file ``(PSNR, bytes, latent step, zeroed)`` and
``{step: (PSNR, bytes)}``; PSNR over the normalised range [-1, 1]::

    python research/latent_step_probe.py ct_head 256 2000

Run from ``benchmarks/`` with the library on ``PYTHONPATH``; results in
docs/benchmarks/notes.md (session 22).
"""

import argparse
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from _common import load_volume
from napari_moec.families.grid.fit import pack_model
from napari_moec.families.grid.sizing import auto_config
from napari_moec.families.grid.train import GridTrainer, TrainSettings
from napari_moec.generators import drain
from napari_moec.sampling import Normalization

STEPS = (0.9, 0.95, 1.0, 1.03, 1.06, 1.1, 1.15, 1.2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("volume")
    ap.add_argument("ratio", type=float)
    ap.add_argument("steps", type=int)
    args = ap.parse_args()
    torch.set_num_threads(1)
    volume = load_volume(args.volume)
    limit = int(volume.nbytes // args.ratio) - 60  # the payload of a file with a 60-byte frame
    cfg = auto_config(volume.shape, limit)
    trainer = GridTrainer(
        Normalization.of(volume).apply(volume), cfg, limit, TrainSettings(steps=args.steps)
    )
    kept = drain(trainer.run())

    def psnr(score: float) -> float:
        return round(10 * np.log10(4.0 / -score), 3)

    row = {
        "volume": args.volume,
        "ratio": args.ratio,
        "steps": args.steps,
        "limit": limit,
        "kept": (psnr(kept.score), len(kept.payload), kept.latent_step, kept.zeroed),
    }
    for step in STEPS:
        payload = pack_model(trainer.model, 1.0, 0, step)
        row[str(step)] = (psnr(trainer.score(payload)), len(payload))
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
