"""The grid family's latent entropy model: checkerboard buckets ("cb") against the learned
context model ("lin"), at equal STEPS and equal byte budgets (never timed: the machine may
be loaded, and a step count is what both variants get alike).

One JSON line per (volume, ratio, context) run: payload bytes and budget, PSNR of the best
payload decoded from its bytes (over the original's range), the latent bits of that payload,
and the entropy-decoding work per voxel counted in operations (``ops_per_voxel``: the context
computation per latent, from :func:`napari_moec.families.grid.context.decode_ops`, times
latents per voxel; the synthesis is the same network for both, so it is left out), plus the
number of sequential coder calls (``coder_calls``: one per symbol group).

    python benchmarks/context_model.py run --volumes hipct ct_head mri4d \
        --ratios 64 256 1024 --contexts cb lin --steps 600 --threads 1 \
        --out docs/benchmarks/data/context_model.jsonl
    python benchmarks/context_model.py report docs/benchmarks/data/context_model.jsonl

The payload budget is the file budget (original bytes / ratio) minus 60 bytes for the frame,
as in ``grid_fill.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import tifffile
import torch

from napari_moec.families.grid.decode import decode_region, model_from_payload
from napari_moec.families.grid.learned import decode_ops
from napari_moec.families.grid.payload import side_bytes, unpack_payload
from napari_moec.families.grid.sizing import auto_config
from napari_moec.families.grid.train import GridTrainer, TrainSettings
from napari_moec.generators import drain
from napari_moec.metrics import psnr
from napari_moec.sampling import Normalization

DATA = Path(os.environ.get("MOEC_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
VOLUMES = {
    "hipct": "hipct_brain_sci_64.tif",
    "ct_head": "ct_head_vtk_headsq.tif",
    "mri4d": "mri_4d_epi_nibabel_afni_example4d.tif",
}
FRAME = 60


def run_one(volume_name: str, ratio: float, context: str, steps: int, seed: int) -> dict:
    volume = tifffile.imread(DATA / VOLUMES[volume_name])
    norm = Normalization.of(volume)
    limit = int(volume.nbytes // ratio) - FRAME
    cfg = auto_config(volume.shape, limit, context=context)
    settings = TrainSettings(steps=steps, checkpoint_every=max(1, steps // 4))
    trainer = GridTrainer(norm.apply(volume), cfg, limit, settings, seed=seed)
    best = drain(trainer.run())
    payload = unpack_payload(best.payload, cfg)
    values, _ = decode_region(model_from_payload(payload))
    network = len(best.payload) - side_bytes(cfg)  # stream + context side bytes
    radius = max(int(np.abs(q).max(initial=1)) for q in (*payload.latents, *payload.weights))
    ops, calls = decode_ops(cfg.context, cfg.grid_shapes, payload.latents, radius)
    return {
        "volume": volume_name,
        "ratio": ratio,
        "context": context,
        "steps": trainer.step_count,
        "seed": seed,
        "payload_bytes": len(best.payload),
        "payload_budget": limit,
        "stream_bytes": network,
        "psnr": round(psnr(volume, norm.invert(values, volume.dtype)), 3),
        "latents": cfg.latent_count,
        "voxels": int(volume.size),
        "ops_per_voxel": round(ops / volume.size, 4),
        "coder_calls": calls,
        "latent_step": best.latent_step,
        "zeroed": best.zeroed,
        "config": cfg.to_json(),
    }


def cmd_run(args) -> None:
    torch.set_num_threads(args.threads)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    out = Path(args.out) if args.out else None
    for v in args.volumes:
        for r in args.ratios:
            for c in args.contexts:
                rec = run_one(v, r, c, args.steps, args.seed) | {"commit": commit}
                line = json.dumps(rec)
                print(line, flush=True)
                if out:
                    with out.open("a") as fh:
                        fh.write(line + "\n")


def cmd_report(args) -> None:
    rows = [json.loads(s) for s in Path(args.jsonl).read_text().splitlines() if s.strip()]
    by = {(r["volume"], r["ratio"], r["context"]): r for r in rows}
    cells = sorted({(r["volume"], r["ratio"]) for r in rows}, key=lambda k: (k[0], k[1]))
    print("| volume | ratio | budget B | cb bytes | cb PSNR | lin bytes | lin PSNR | Δ dB "
          "| cb ops/voxel | lin ops/voxel | cb / lin coder calls |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for v, r in cells:
        a, b = by.get((v, r, "cb")), by.get((v, r, "lin"))
        if a is None or b is None:
            continue
        print(
            f"| {v} | {r:g}x | {a['payload_budget']} | {a['payload_bytes']} | {a['psnr']:.2f} "
            f"| {b['payload_bytes']} | {b['psnr']:.2f} | {b['psnr'] - a['psnr']:+.2f} "
            f"| {a['ops_per_voxel']:.3f} | {b['ops_per_voxel']:.3f} "
            f"| {a['coder_calls']} / {b['coder_calls']} |"
        )
    deltas = [
        by[(v, r, "lin")]["psnr"] - by[(v, r, "cb")]["psnr"]
        for v, r in cells
        if (v, r, "lin") in by and (v, r, "cb") in by
    ]
    if deltas:
        print(
            f"\nlin - cb: mean {np.mean(deltas):+.2f} dB, wins {sum(d > 0 for d in deltas)}"
            f"/{len(deltas)}, min {min(deltas):+.2f}, max {max(deltas):+.2f}"
        )


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run")
    run.add_argument("--volumes", nargs="+", choices=VOLUMES, default=list(VOLUMES))
    run.add_argument("--ratios", nargs="+", type=float, default=[64, 256, 1024])
    run.add_argument("--contexts", nargs="+", choices=("cb", "lin"), default=["cb", "lin"])
    run.add_argument("--steps", type=int, default=600)
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--threads", type=int, default=1)
    run.add_argument("--out", default=None)
    rep = sub.add_parser("report")
    rep.add_argument("jsonl")
    args = ap.parse_args(argv)
    {"run": cmd_run, "report": cmd_report}[args.cmd](args)


if __name__ == "__main__":
    main(sys.argv[1:])
