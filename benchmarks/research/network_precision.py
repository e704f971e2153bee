"""What a grid file loses to its stored network's precision, late in a run: one JSON line per
report with the whole volume's PSNR decoded three ways from the same weights: the float
network over the rounded latents (what the training sees), and the payloads packed at network
steps 1 (nominal int8) and 0.25 (the file's integers four times finer), with their bytes.

    python benchmarks/research/network_precision.py macaque 256 --seconds 300
    python benchmarks/research/network_precision.py hipct 64 --seconds 300 --from 0.8

Session 29 (docs/benchmarks/notes.md): on the macaque at 256x the int8 network cost 0.1 to
3.2 dB from one report to the next in the last fifth of a 5-minute run (47.93 dB with the
float network at the end, 44.72 with int8, 47.91 at step 0.25 for 108 more bytes): the
"jitter" of large volumes' checkpoints, and why ``fit.network_steps_for`` tries finer steps
first where their bytes are cheap. The run trains as the research script does (2 threads, the
schedule compressed to the time limit; its options, ``--config``, ``--train`` and ``--seed``
among them); the reports cost it steps (three whole decodes each).
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from grid_equal_time import arguments, setup

from _common import provenance
from napari_moec.families.grid.decode import decode_region, model_from_payload
from napari_moec.families.grid.fit import pack_model
from napari_moec.families.grid.payload import unpack_payload
from napari_moec.families.grid.train import GridTrainer
from napari_moec.metrics import psnr


def main() -> None:
    ap = arguments(__doc__.split("\n")[0])
    ap.add_argument("--from", dest="start", type=float, default=0.8, help="progress to report from")
    ap.add_argument("--every", type=int, default=200, help="steps between reports")
    args = ap.parse_args()
    vol, norm, limit, cfg, settings, _ = setup(args)
    trainer = GridTrainer(norm.apply(vol), cfg, limit, settings, seed=args.seed)

    def quality(values: np.ndarray) -> float:
        return round(psnr(vol, norm.invert(values, vol.dtype)), 3)

    while not trainer.done:
        trainer.advance()
        if trainer.progress < args.start or trainer.step_count % args.every:
            continue
        rounded = copy.deepcopy(trainer.model)
        with torch.no_grad():
            for y in rounded.grids.latents:
                y.copy_(torch.round(y))
        row = {
            "step": trainer.step_count,
            "progress": round(trainer.progress, 3),
            "float_network": quality(decode_region(rounded.eval())[0]),
        }
        for step in (1.0, 0.25):
            data = pack_model(trainer.model, network_step=step)
            values, _ = decode_region(model_from_payload(unpack_payload(data, cfg)))
            row[f"step_{step:g}"] = {"psnr": quality(values), "bytes": len(data)}
        row |= {"volume": args.volume, "ratio": args.ratio, "limit": limit, **provenance("cpu")}
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
