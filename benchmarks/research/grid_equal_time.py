"""One grid-family training lever at equal wall time: ``GridTrainer`` with a time limit and
one setting changed, as ``time_to_quality.py`` trains (2 threads, the schedule compressed to
the limit, the best file kept), printing one JSON line: PSNR of the kept payload decoded from
its bytes, its bytes, the steps and the last checkpoints. Timed: run alone on an idle machine,
the baseline in the same session (this machine's speed moves between sessions).

    python benchmarks/research/grid_equal_time.py macaque 256 --max-voxels 65536
    python benchmarks/research/grid_equal_time.py macaque 256 --train lr_latent=0.1
    python benchmarks/research/grid_equal_time.py hipct 64 --first-level 0
    python benchmarks/research/grid_equal_time.py ct_head 64 --config hidden=32
    python benchmarks/research/grid_equal_time.py macaque 256 --experts 4 --trace 500

``--trace N`` adds the rate controller's state every N steps (``trace``: seconds, progress,
lam, the training batch's MSE, the rounded latents' proxy bits against the target in proxy
bits, the calibration, the experts' loads): how the bits reach, overshoot or miss the budget.

Session 16's runs (docs/benchmarks/notes.md): voxels a step and the latent lr on the macaque,
the voxel-lattice level at 64x; JSON lines in docs/benchmarks/data/equal_time/.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import load_volume, provenance
from napari_moec.families.grid.decode import decode_region, model_from_payload
from napari_moec.families.grid.family import GridOptions, top_k_of
from napari_moec.families.grid.payload import unpack_payload
from napari_moec.families.grid.sizing import auto_config
from napari_moec.families.grid.train import GridTrainer, TrainSettings
from napari_moec.generators import drain
from napari_moec.metrics import psnr
from napari_moec.sampling import Normalization


def arguments(description: str) -> argparse.ArgumentParser:
    """The options of a timed grid run (this script's; ``network_precision.py`` adds its own)."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("volume")
    ap.add_argument("ratio", type=float)
    ap.add_argument("--seconds", type=float, default=300.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--experts", type=int, default=1, help="top-k is the family's auto")
    ap.add_argument("--max-voxels", type=int, default=None, help="default: the trainer's")
    ap.add_argument("--first-level", type=int, default=None, help="default: the sizing's")
    ap.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="FIELD=INT",
        help="override an integer GridConfig field (hidden=32); repeatable",
    )
    ap.add_argument(
        "--train",
        action="append",
        default=[],
        metavar="FIELD=FLOAT",
        help="override a float TrainSettings field (lr_latent=0.1); repeatable",
    )
    ap.add_argument("--trace", type=int, default=0, metavar="N", help="controller state every N")
    ap.add_argument("--seed", type=int, default=0, help="the model's initialisation")
    return ap


def setup(args: argparse.Namespace):
    """(volume, normalisation, payload limit, config, settings, settings overrides) of a timed
    run from ``arguments``' options; torch's threads set."""
    torch.set_num_threads(args.threads)
    vol = load_volume(args.volume)
    norm = Normalization.of(vol)
    limit = int(vol.nbytes // args.ratio) - 60  # a 60-byte frame, as grid_fill.py
    fixed = {} if args.first_level is None else {"first_level": args.first_level}
    fixed |= {k: int(v) for k, v in (item.split("=", 1) for item in args.config)}
    top_k = fixed.pop("top_k", None) or top_k_of(GridOptions(num_experts=args.experts))
    fixed.setdefault("context", GridOptions().context)  # the family's entropy model
    cfg = auto_config(vol.shape, limit, num_experts=args.experts, top_k=top_k, **fixed)
    settings = TrainSettings(steps=10**9, time_limit=args.seconds, max_voxels=args.max_voxels)
    overrides = {k: float(v) for k, v in (item.split("=", 1) for item in args.train)}
    settings = replace(settings, **overrides)
    return vol, norm, limit, cfg, settings, overrides


def main() -> None:
    args = arguments(__doc__.split("\n")[0]).parse_args()
    vol, norm, limit, cfg, settings, overrides = setup(args)
    t0 = time.perf_counter()
    trainer = GridTrainer(norm.apply(vol), cfg, limit, settings, seed=args.seed)
    trace = []

    def record(event) -> None:
        if args.trace and trainer.step_count % args.trace == 0:
            trace.append(_controller_state(trainer, event, time.perf_counter() - t0))

    best = drain(trainer.run(), record)
    wall = time.perf_counter() - t0
    values, _ = decode_region(model_from_payload(unpack_payload(best.payload, cfg)))
    row = {
        "volume": args.volume,
        "ratio": args.ratio,
        "seconds": args.seconds,
        "experts": args.experts,
        "top_k": cfg.top_k,
        "max_voxels": trainer.max_voxels,
        "first_level": cfg.first_level,
        "hidden": cfg.hidden,
        "expert_layers": cfg.expert_layers,
        "context": cfg.context,
        "latents": cfg.latent_count,
        "seed": args.seed,
        "train_overrides": overrides,
        "psnr": round(psnr(vol, norm.invert(values, vol.dtype)), 3),
        "payload_bytes": len(best.payload),
        "payload_budget": limit,
        "steps": trainer.step_count,
        "wall_s": round(wall, 1),
        "checkpoints": [
            (h["step"], round(10 * math.log10(4 / h["mse"]), 2), h["bytes"], h["zeroed"])
            for h in trainer.history[-40:]
        ],
        **({"trace": trace} if args.trace else {}),
        **provenance("cpu"),
    }
    print(json.dumps(row), flush=True)


def _controller_state(trainer: GridTrainer, event, seconds: float) -> dict:
    """The rate controller's view after a step (module docstring, ``--trace``)."""
    s = trainer.read_back(event)
    return {
        "step": s.step,
        "seconds": round(seconds, 1),
        "progress": round(s.progress, 3),
        "lam": round(s.lam, 4),
        "mse": s.mse,
        "proxy_bits": round(s.bits),
        "target_proxy_bits": round(s.target_bits),
        "calibration": round(trainer.calibration, 3),
        "load": [round(float(x), 3) for x in s.load],
    }


if __name__ == "__main__":
    main()
