"""Ways to fit an over-budget grid model into its bytes, on one tile of the 512³ store.

Session 22 found the 512³ store's corner tile (session 21, ``tile_alone.py``) losing 4-6 dB at
every checkpoint whose latents had overshot the budget by 5-10 %: the fit zeroed the nonzero
latents of smallest ``|y|`` over all levels. This trains that tile (its region, box and budget
as the store gave them, one thread) and, at the given steps, fits the same weights into the
budget four ways and decodes each over the tile:

- ``plain``: the plain rounding (over the budget; the reference);
- ``zero_a{α}``: the fewest zeroed latents that fit, ranked by the squared error zeroing adds
  to a latent times (voxels a latent of its level spans)^α; α = 0 is the ranking by ``|y|``,
  α = 1 the library's since session 22 (:func:`napari_moec.families.grid.fit.quantize_latents`);
- ``coarse_step``: the finest latent step above 1 that fits.

::

    python research/fit_over_budget.py 2551 0,3,0 37246 1000,1400,1800

Run from ``benchmarks/`` with the library on ``PYTHONPATH``; one JSON line a stop (PSNR,
zeroed count or step, bytes). Results in docs/benchmarks/notes.md (session 22).
"""

import argparse
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tile_alone import tile_target  # the tile as the store trains it

from napari_moec.families.grid.decode import decode_region, model_from_payload
from napari_moec.families.grid.fit import pack_model, quantize_latents, quantize_weights
from napari_moec.families.grid.payload import pack_payload, unpack_payload
from napari_moec.families.grid.sizing import auto_config
from napari_moec.families.grid.train import GridTrainer, TrainSettings

ALPHAS = (0.0, 0.5, 1.0, 2.0)


def zeroed(model, k: int, alpha: float) -> list[np.ndarray]:
    """The plain rounding with the ``k`` nonzero latents of least weighted cost set to 0."""
    ints = quantize_latents(model)
    voxels = float(np.prod(model.cfg.shape))
    vals = [y.detach().double().numpy() for y in model.grids.latents]
    cost = np.concatenate(
        [
            (q * (2 * v - q) * (voxels / v.size) ** alpha).ravel()
            for v, q in zip(vals, ints, strict=True)
        ]
    )
    flat = np.concatenate([q.ravel() for q in ints])
    nonzero = np.flatnonzero(flat)
    flat[nonzero[np.argsort(cost[nonzero], kind="stable")][:k]] = 0
    return [
        p.reshape(q.shape)
        for p, q in zip(np.split(flat, np.cumsum([q.size for q in ints])[:-1]), ints, strict=True)
    ]


def fewest_zeroed(model, budget: int, alpha: float) -> tuple[int, bytes]:
    """(k, payload) of the fewest zeroed latents that fit (bisection to one latent)."""
    weights, scales = quantize_weights(model)

    def pack(k: int) -> bytes:
        return pack_payload(model.cfg, zeroed(model, k, alpha), weights, scales, 1.0)

    lo = 0
    hi = sum(int(np.count_nonzero(q)) for q in quantize_latents(model))
    best = pack(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        data = pack(mid)
        lo, hi, best = (lo, mid, data) if len(data) <= budget else (mid, hi, best)
    return hi, best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("steps", type=int, help="the tile's schedule")
    ap.add_argument("tile", help="tile index, e.g. 0,3,0")
    ap.add_argument("budget", type=int, help="the tile's payload budget (bytes)")
    ap.add_argument("stops", help="steps to fit at, e.g. 1000,1400,1800")
    args = ap.parse_args()
    torch.set_num_threads(1)
    stops = sorted(int(s) for s in args.stops.split(","))
    target, box = tile_target(tuple(int(c) for c in args.tile.split(",")))
    cfg = auto_config(target.shape, args.budget)
    trainer = GridTrainer(target, cfg, args.budget, TrainSettings(steps=args.steps), decoded=box)
    cut = tuple(slice(a, b) for a, b in box)

    def psnr(payload: bytes) -> float:
        decoded, _ = decode_region(model_from_payload(unpack_payload(payload, cfg)))
        mse = float(np.mean((decoded[cut].astype(np.float64) - target[cut]) ** 2))
        return round(10 * np.log10(4.0 / mse), 3)  # the normalised range is [-1, 1]

    for stop in stops:
        while trainer.step_count < stop:
            trainer.advance()
            if trainer.step_count % trainer.st.checkpoint_every == 0:
                trainer.checkpoint()  # as in a run: checkpoints read the weights only
        model = trainer.model
        plain = pack_model(model)
        row = {"step": stop, "budget": args.budget, "lam": trainer.rate.lam}
        row["plain"] = (psnr(plain), len(plain))
        for alpha in ALPHAS:
            k, data = fewest_zeroed(model, args.budget, alpha)
            row[f"zero_a{alpha}"] = (psnr(data), k, len(data))
        lo, hi, best = 0.0, 2.0, None  # latent step 2**x
        for _ in range(10):
            mid = (lo + hi) / 2
            data = pack_model(model, 1.0, 0, 2.0**mid)
            lo, hi, best = (
                (lo, mid, (data, 2.0**mid)) if len(data) <= args.budget else (mid, hi, best)
            )
        if best is not None:
            row["coarse_step"] = (psnr(best[0]), round(float(np.float16(best[1])), 4), len(best[0]))
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
