"""Budget fill and quality of the grid family at a fixed number of STEPS (not seconds).

Writes one JSON line per run: volume, ratio, sampling, steps, payload bytes used against the
payload budget, PSNR of the best payload decoded from its bytes (over the original's range),
and the checkpoint history. Wall seconds are reported for information only.

    python benchmarks/grid_fill.py macaque 256 --steps 2000 --sampling box --device cuda
    python benchmarks/grid_fill.py hipct 256 --steps 2000

The payload budget is the file budget (original bytes / ratio) minus 60 bytes for the frame,
as in the prototype's accounting (benchmarks/research/grid_experts/REPORT.md).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import replace
from pathlib import Path

import tifffile
import torch

from napari_moec.families.grid.config import CONTEXTS
from napari_moec.families.grid.decode import decode_region, model_from_payload
from napari_moec.families.grid.payload import unpack_payload
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
    "macaque": "mri_t1_macaque_inia19_mricron.tif",
}
FRAME = 60


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("volume", choices=VOLUMES)
    ap.add_argument("ratio", type=float)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--sampling", choices=("stride", "box"), default="stride")
    ap.add_argument("--lr-latent", type=float, default=0.05)
    ap.add_argument("--checkpoint-every", type=int, default=500)
    ap.add_argument("--calibrate-every", type=int, default=100, help="0: never")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lam-free-after", type=float, default=None, help="0: no anti-windup")
    ap.add_argument("--experts", type=int, default=1)
    ap.add_argument("--first-level", type=int, default=None, help="override auto sizing")
    ap.add_argument("--hidden", type=int, default=None, help="override auto sizing")
    ap.add_argument("--context", choices=CONTEXTS, default=None, help="override the default")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=INT",
        help="override an integer GridConfig field (gate_hidden=4, expert_layers=1); repeatable",
    )
    ap.add_argument(
        "--train",
        action="append",
        default=[],
        metavar="FIELD=FLOAT",
        help="override a float TrainSettings field (cone_fade=0.25); repeatable",
    )
    ap.add_argument("--tag", default="")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    volume = tifffile.imread(DATA / VOLUMES[args.volume])
    norm = Normalization.of(volume)
    limit = int(volume.nbytes // args.ratio) - FRAME
    fixed = {"first_level": args.first_level, "hidden": args.hidden, "context": args.context}
    fixed = {k: v for k, v in fixed.items() if v is not None}  # level 0 is a choice
    fixed |= {k: int(v) for k, v in (item.split("=", 1) for item in args.set)}
    cfg = auto_config(volume.shape, limit, num_experts=args.experts, **fixed)
    settings = TrainSettings(
        steps=args.steps,
        sampling=args.sampling,
        lr_latent=args.lr_latent,
        checkpoint_every=args.checkpoint_every,
        calibrate_every=args.calibrate_every or 10**9,
    )
    settings = replace(
        settings, **{k: float(v) for k, v in (item.split("=", 1) for item in args.train)}
    )
    if args.lam_free_after is not None:
        settings = replace(settings, lam_free_after=args.lam_free_after)
    t0 = time.perf_counter()
    trainer = GridTrainer(
        norm.apply(volume), cfg, limit, settings, device=args.device, seed=args.seed
    )
    best = drain(trainer.run())
    wall = time.perf_counter() - t0
    model = model_from_payload(unpack_payload(best.payload, cfg), args.device)
    values, labels = decode_region(model, labels=True)
    record = {
        "tag": args.tag,
        "volume": args.volume,
        "ratio": args.ratio,
        "device": args.device,
        "sampling": args.sampling,
        "lr_latent": args.lr_latent,
        "calibrate_every": args.calibrate_every,
        "seed": args.seed,
        "lam_free_after": settings.lam_free_after,
        "train_overrides": args.train,
        "grid_overrides": args.set,
        "steps": trainer.step_count,
        "payload_bytes": len(best.payload),
        "payload_budget": limit,
        "fill": round(len(best.payload) / limit, 4),
        "psnr": round(psnr(volume, norm.invert(values, volume.dtype)), 3),
        "config": cfg.to_json(),
        "latents": cfg.latent_count,
        "wall_s_info_only": round(wall, 1),
        "label_counts": [int((labels == e).sum()) for e in range(cfg.num_experts)],
        "history": trainer.history,
    }
    print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
