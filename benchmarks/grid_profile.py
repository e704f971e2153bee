"""Where a grid training run's wall time goes: optimiser steps, rate calibrations, checkpoints.

The first GPU lease found the grid trainer at 164 ms a step on a 256³ volume (an H200 does
the arithmetic of such a step in a few ms), so this script times each part of
:class:`~napari_moec.families.grid.train.GridTrainer` on its own, synchronising the device
around each: ``steps`` optimiser steps, one :meth:`calibrate`, one :meth:`checkpoint` (the
exact budget fit, every candidate decoded), and a torch profiler table of a few steps.

    DEV=cuda python benchmarks/grid_profile.py macaque-mirror256 256 1 --steps 40
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from gpu_session import volume
from napari_moec.families.grid.family import GridOptions, top_k_of
from napari_moec.families.grid.sizing import auto_config
from napari_moec.families.grid.train import GridTrainer, TrainSettings
from napari_moec.sampling import Normalization

DEVICE = os.environ.get("DEV", "cuda" if torch.cuda.is_available() else "cpu")


def sync() -> None:
    if DEVICE.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn):
    sync()
    t0 = time.perf_counter()
    out = fn()
    sync()
    return out, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("name")
    ap.add_argument("ratio", type=float)
    ap.add_argument("experts", type=int)
    ap.add_argument("--top-k", type=int, default=None, help="default: the family's auto")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--profile-steps", type=int, default=5)
    ap.add_argument("--control-every", type=int, default=None)
    args = ap.parse_args()
    vol = volume(args.name)
    limit = int(vol.nbytes // args.ratio) - 60
    top_k = top_k_of(GridOptions(num_experts=args.experts, top_k=args.top_k))
    cfg = auto_config(vol.shape, limit, num_experts=args.experts, top_k=top_k)
    trainer = GridTrainer(
        Normalization.of(vol).apply(vol),
        cfg,
        limit,
        TrainSettings(steps=10**6, control_every=args.control_every),
        device=DEVICE,
    )
    _, warm = timed(lambda: [trainer.advance() for _ in range(3)])
    _, steps = timed(lambda: [trainer.advance() for _ in range(args.steps)])
    hard = trainer.step().bits
    _, calibrate = timed(lambda: trainer.calibrate(hard))
    _, checkpoint = timed(trainer.checkpoint)
    row = {
        "volume": args.name,
        "shape": vol.shape,
        "ratio": args.ratio,
        "experts": args.experts,
        "top_k": top_k,
        "control_every": trainer._control_every,
        "device": torch.cuda.get_device_name(0) if DEVICE.startswith("cuda") else "cpu",
        "latents": cfg.latent_count,
        "warmup_3_steps_s": round(warm, 3),
        "step_ms": round(1000 * steps / args.steps, 2),
        "calibrate_s": round(calibrate, 3),
        "checkpoint_s": round(checkpoint, 3),
        "threads": torch.get_num_threads(),
    }
    print(json.dumps(row), flush=True)
    activities = [torch.profiler.ProfilerActivity.CPU]
    if DEVICE.startswith("cuda"):
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(args.profile_steps):
            trainer.advance()
        sync()
    table = prof.key_averages()
    print(table.table(sort_by="self_cpu_time_total", row_limit=25), flush=True)
    if DEVICE.startswith("cuda"):
        for key in ("self_device_time_total", "self_cuda_time_total"):
            try:
                print(table.table(sort_by=key, row_limit=25), flush=True)
                break
            except (AttributeError, KeyError, ValueError):
                continue


if __name__ == "__main__":
    main()
