"""Cosine vs exponential learning-rate schedule against the number of training steps.

The measurement behind ``schedule.COSINE_MIN_STEPS``: the warm-up + cosine schedule from a 5e-3
peak beats the exponential decay from 2e-3 on long runs, and loses badly on short ones (the
few hundred steps of a tile of a store). One 128³ tile of the macaque T1 (the brain, as a
tiled store's tile sees it), compressed at each ratio and step count with each schedule; PSNR
and SSIM of the saved file, decoded from disk, over the tile's data range.

    python benchmarks/schedule_steps.py --ratios 1024 256 --steps 100 300 600 1000 \\
        --out docs/benchmarks/data/schedule
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from _common import compress_and_measure, load_volume, provenance, write_json

#: The tile: z, y, x slices of the macaque T1 (128 x 206 x 168), all brain and background.
TILE = (slice(0, 128), slice(40, 168), slice(20, 148))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ratios", nargs="+", type=float, default=[1024, 256])
    parser.add_argument("--steps", nargs="+", type=int, default=[100, 300, 600, 1000])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/schedule"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from napari_moec.config import TrainConfig

    tile = np.ascontiguousarray(load_volume("macaque").astype(np.float32)[TILE])
    rows = []
    for ratio in args.ratios:
        for steps in args.steps:
            for schedule in ("cosine", "exponential"):
                train = TrainConfig(steps=steps, schedule=schedule)
                run = compress_and_measure(tile, ratio, train=train, threads=args.threads)
                model = run.compressed.header.model
                rows.append({"ratio": ratio, "steps": steps, "schedule": schedule,
                             "width": model.hidden_features, "experts": model.num_experts,
                             "file_bytes": run.file_bytes, "seconds": round(run.seconds, 1),
                             **run.quality})  # fmt: skip
                print(rows[-1], flush=True)
    write_json(args.out / "schedule_steps.json", {"tile": str(TILE), "rows": rows,
                                                  **provenance("cpu")})  # fmt: skip


if __name__ == "__main__":
    main()
