"""Grid family on a GPU, straight through its trainer: one row per ``volume:ratio:experts:seconds``.

The first GPU lease of the project (docs/benchmarks/gpu.md) came before the grid family was
wired into ``napari_moec.compress``, so this script drives
:class:`~napari_moec.families.grid.train.GridTrainer` directly: a wall-clock schedule of
``seconds``, the best real payload (``<= original bytes / ratio - 60``, the frame's reserve),
decoded from its bytes twice (the second, warm, is the timing), PSNR/SSIM over the data range.
Volumes as ``gpu_session.py`` names them (``macaque-mirror256`` is the macaque reflected to 256³).

    DEV=cuda python benchmarks/gpu_grid.py macaque-mirror256:256:1:60 > grid256.jsonl
"""

from __future__ import annotations

import json
import os
import sys
import time

import torch

from gpu_session import volume
from napari_moec.families.grid.decode import decode_region, model_from_payload
from napari_moec.families.grid.payload import unpack_payload
from napari_moec.families.grid.sizing import auto_config
from napari_moec.families.grid.train import GridTrainer, TrainSettings
from napari_moec.generators import drain
from napari_moec.metrics import psnr, ssim
from napari_moec.sampling import Normalization

DEVICE = os.environ.get("DEV", "cuda")


def sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def one_row(spec: str) -> dict:
    name, ratio, experts, seconds = spec.split(":")
    vol = volume(name)
    norm = Normalization.of(vol)
    limit = int(vol.nbytes // float(ratio)) - 60
    cfg = auto_config(vol.shape, limit, num_experts=int(experts))
    every = os.environ.get("CONTROL_EVERY")  # unset: the trainer's default for the device
    settings = TrainSettings(
        steps=10**6, time_limit=float(seconds), control_every=int(every) if every else None
    )
    sync()
    t0 = time.perf_counter()
    trainer = GridTrainer(norm.apply(vol), cfg, limit, settings, device=DEVICE)
    best = drain(trainer.run())
    sync()
    wall = time.perf_counter() - t0
    model = model_from_payload(unpack_payload(best.payload, cfg), DEVICE)
    timings = []
    for _ in range(2):
        sync()
        t1 = time.perf_counter()
        values, labels = decode_region(model, labels=True)
        sync()
        timings.append(time.perf_counter() - t1)
    out = norm.invert(values, vol.dtype)
    return {
        "spec": spec,
        "shape": vol.shape,
        "steps": trainer.step_count,
        "control_every": trainer._control_every,
        "payload_bytes": len(best.payload),
        "budget_payload": limit,
        "wall_s": round(wall, 1),
        "psnr": round(psnr(vol, out), 3),
        "ssim": round(ssim(vol, out), 4),
        "decode_s_warm": round(timings[1], 4),
        "decode_mvox_s": round(vol.size / timings[1] / 1e6, 1),
        "labels": [int((labels == e).sum()) for e in range(cfg.num_experts)],
        "config": cfg.to_json(),
        "device": torch.cuda.get_device_name(0) if DEVICE == "cuda" else "cpu",
        "torch": torch.__version__,
    }


def main(specs: list[str]) -> int:
    for spec in specs:
        try:
            print(json.dumps(one_row(spec)), flush=True)
        except Exception as exc:  # one failed row must not cost the rest of the lease
            print("FAIL", spec, type(exc).__name__, exc, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
