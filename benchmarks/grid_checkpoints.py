"""What a grid checkpoint costs and whether its cheap score ranks files as the whole volume does,
at a fixed number of STEPS (counts, not seconds: run it on a loaded machine if need be).

One run of the default compression (``Compressor``, grid, one thread): at every checkpoint
of the grid trainer the current weights are stored twice, the way a checkpoint does now
(``fit.fit_checkpoint``, scored on the fixed sample ``GridTrainer.sample``) and the way it did
before issue 22 (``fit.fit_budget``, every candidate decoded in full). Per checkpoint it
prints and writes the packs and the voxels decoded by each, and the PSNR over the whole
volume (normalised range) of both files; at the end, the file the run kept, the fit of the
last weights alone, and whether the sample chose the checkpoint the whole volume would.

    python benchmarks/grid_checkpoints.py ct_head 1024 --steps 4000
    python benchmarks/grid_checkpoints.py macaque 256 --steps 1000
"""

from __future__ import annotations

import argparse
import copy
import math

import numpy as np
import torch

import napari_moec.families.grid.fit as grid_fit
from _common import OUT, load_volume, provenance, write_json
from napari_moec import Compressor, RunConfig, TrainConfig
from napari_moec.families.grid.family import GridFamily
from napari_moec.generators import drain


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("volume")
    ap.add_argument("ratio", type=float)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    vol = load_volume(args.volume)
    packs = [0]
    pack = grid_fit.pack_payload

    def counting_pack(*a, **kw):
        packs[0] += 1
        return pack(*a, **kw)

    grid_fit.pack_payload = counting_pack  # every payload either fit packs goes through it
    trainers, points = [], []
    make = GridFamily.trainer

    def spy(self, *a, **kw):
        family_trainer = make(self, *a, **kw)
        trainers.append(family_trainer.inner)
        inner, checkpoint = family_trainer.inner, family_trainer.inner.checkpoint
        n_voxels = math.prod(inner.cfg.shape)

        def db(score: float) -> float:
            return 10 * math.log10(4.0 / -score)  # normalised range [-1, 1]

        def measured(*, exact: bool = False):
            before, sample = packs[0], inner.sample()[2].size
            decodes = [0]
            score_sample = inner.score_sample

            def counted(payload):
                decodes[0] += 1
                return score_sample(payload)

            inner.score_sample = counted
            result = checkpoint(exact=exact)
            inner.score_sample = score_sample
            new_packs = packs[0] - before
            before, full = packs[0], [0]

            def score(payload):
                full[0] += 1
                return inner.score(payload)

            old = grid_fit.fit_budget(inner.model, inner.limit, score)
            point = {
                "step": inner.step_count,
                "exact": exact,
                "new_packs": new_packs,
                "new_voxels": decodes[0] * sample,
                "new_psnr": round(db(inner.score(result.payload)), 3),
                "new_sample_psnr": round(db(result.score), 3),
                "old_packs": packs[0] - before,
                "old_voxels": full[0] * n_voxels,
                "old_psnr": round(db(old.score), 3),
            }
            points.append(point)
            print(point, flush=True)
            return result

        inner.checkpoint = measured
        return family_trainer

    GridFamily.trainer = spy
    comp = Compressor(vol, args.ratio, train=TrainConfig(steps=args.steps, seed=args.seed),
                      run=RunConfig(device="cpu", threads=1))  # fmt: skip
    result = drain(comp.run())
    model = copy.deepcopy(comp.model)
    model.best_payload = None
    alone = comp.store(model, args.steps, 0.0).report.psnr
    periodic = [p for p in points if not p["exact"]]
    by_sample = max(periodic, key=lambda p: p["new_sample_psnr"], default=None)
    by_volume = max(periodic, key=lambda p: p["new_psnr"], default=None)
    record = {
        "volume": args.volume,
        "ratio": args.ratio,
        "steps": args.steps,
        "voxels": int(vol.size),
        "checkpoints": points,
        "kept_psnr": result.report.psnr,
        "last_weights_alone_psnr": alone,
        "sample_chose": None if by_sample is None else by_sample["step"],
        "volume_would_choose": None if by_volume is None else by_volume["step"],
        "mean_new_voxels": float(np.mean([p["new_voxels"] for p in periodic] or [0])),
        "mean_old_voxels": float(np.mean([p["old_voxels"] for p in periodic] or [0])),
        "mean_new_packs": float(np.mean([p["new_packs"] for p in periodic] or [0])),
        "mean_old_packs": float(np.mean([p["old_packs"] for p in periodic] or [0])),
        **provenance("cpu"),
    }
    print({k: v for k, v in record.items() if k != "checkpoints" and not isinstance(v, dict)})
    write_json(OUT / f"grid_checkpoints_{args.volume}_{args.ratio:g}_{args.steps}.json", record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
