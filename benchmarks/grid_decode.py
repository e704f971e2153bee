"""Decode speed of grid-family files on a CPU: whole volumes from their bytes, voxels/s.

Each volume is compressed with the library's defaults (the grid family, one network) at the
given ratio for a few steps (decode cost depends on the model's shape, not on how well it is
trained), then decoded from its bytes ``--repeat`` times with ``--threads`` torch threads, as
a reader does (``Compressed.from_bytes(...).decode()``); the best time counts. Needs an idle
machine (timed).

    python benchmarks/grid_decode.py --volumes macaque ct_head hipct mri4d --threads 2
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import napari_moec
from _common import ROOT, load_volume, provenance, write_json


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--volumes", nargs="+", default=["macaque", "ct_head", "hipct", "mri4d"])
    parser.add_argument("--ratio", type=float, default=256.0)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument(
        "--experts",
        type=int,
        default=None,
        help="experts (default: the library's auto, one network); top-k is the family's auto",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--out", type=Path, default=ROOT / "docs" / "benchmarks" / "data" / "grid_decode.json"
    )
    args = parser.parse_args(argv)
    rows = []
    for name in args.volumes:
        x = load_volume(name)
        c = napari_moec.compress(
            x, ratio=args.ratio, steps=args.steps, threads=1, num_experts=args.experts
        )
        torch.set_num_threads(args.threads)
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            napari_moec.Compressed.from_bytes(c.data).decode()
            times.append(time.perf_counter() - t0)
        best = min(times)
        model = c.info()["model"]
        row = {
            "volume": name,
            "shape": list(x.shape),
            "ratio": args.ratio,
            "family": c.header.family,
            "experts": model.get("num_experts", 1),
            "top_k": model.get("top_k", 1),
            "file_bytes": c.nbytes,
            "threads": args.threads,
            "seconds": round(best, 3),
            "mvoxels_per_s": round(x.size / best / 1e6, 2),
        }
        rows.append(row)
        print(
            f"| {name} | {'x'.join(map(str, x.shape))} | {args.ratio:g}x | {c.nbytes} B "
            f"| {best:.2f} s | **{row['mvoxels_per_s']}** |",
            flush=True,
        )
    write_json(args.out, {"runs": rows, **provenance("cpu")})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
