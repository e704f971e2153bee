"""How many latent bytes a context from the next coarser level would save, offline.

The checkerboard context (``families/grid/context.py``) codes each level's even latents
with one model and conditions only the odd ones (on their even face neighbours). Here a
trained file's integer latents are read back and the *empirical* entropy of each level's
groups is compared (a lower bound on what a one-byte parametric model per group codes):

* even latents: one group (today) against groups by a context from the next coarser level,
  ``sum |q|`` over the 2^ndim coarser nodes around each node (integer index arithmetic,
  exact in numpy and torch alike), bucketed at 1, 2, 4, 7;
* odd latents: the checkerboard's buckets (today) against those buckets crossed with the
  same coarse buckets.

Each group is charged its empirical entropy, Miller-Madow's small-sample correction and the
one model byte a group stores.

Nothing is trained differently: the latents were shaped by today's rate proxy, so a proxy
that knows the context would shape them further (not measured here).

    python benchmarks/research/coarse_context.py macaque 256 --steps 3000
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import napari_moec
import napari_moec.families.grid.codec as grid_codec
from _common import load_volume
from napari_moec.families.grid.context import coarse_buckets, context_slots, even_mask
from napari_moec.families.grid.family import GridOptions
from napari_moec.format import unpack


def entropy_bits(values: np.ndarray) -> float:
    """Empirical entropy of ``values`` times their count (bits to code them as i.i.d.), with
    Miller-Madow's correction ((K - 1) / 2 nats for K distinct values: a small group's
    empirical entropy understates what coding it costs) and the group's one model byte."""
    if values.size == 0:
        return 0.0
    _, counts = np.unique(values, return_counts=True)
    plugin = -(counts * np.log2(counts / counts.sum())).sum()
    return float(plugin + (counts.size - 1) / (2 * np.log(2)) + 8)


def grouped_bits(values: np.ndarray, groups: np.ndarray) -> float:
    return sum(entropy_bits(values[groups == g]) for g in np.unique(groups))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("volume")
    ap.add_argument("ratio", type=float)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    x = load_volume(args.volume)
    # trained with the checkerboard (the default before session 24's "cbc"): the file whose
    # even latents had no context, regrouped below
    c = napari_moec.compress(
        x, ratio=args.ratio, steps=args.steps, threads=args.threads,
        arch=GridOptions(context="cb"),
    )  # fmt: skip
    captured = {}
    weights_of = grid_codec.weights_of
    grid_codec.weights_of = lambda p: (captured.setdefault("p", p), weights_of(p))[1]
    try:
        unpack(c.data)
    finally:
        grid_codec.weights_of = weights_of
    latents = [q.astype(np.int64) for q in captured["p"].latents]
    rows, totals = [], dict.fromkeys(("even", "even_coarse", "odd", "odd_coarse"), 0.0)
    for i, q in enumerate(latents):
        if q.size < 512 or i + 1 == len(latents):
            continue  # one group (today and here), or no coarser level
        even = even_mask(q.shape)
        cb = context_slots(np.abs(q), even)
        coarse = coarse_buckets(q.shape, np.abs(latents[i + 1]))
        row = {
            "level": i,
            "shape": list(q.shape),
            "even": entropy_bits(q[even]) / 8,
            "even_coarse": grouped_bits(q[even], coarse[even]) / 8,
            "odd": grouped_bits(q[~even], cb[~even]) / 8,
            "odd_coarse": grouped_bits(q[~even], (cb * 8 + coarse)[~even]) / 8,
        }
        rows.append({k: round(v, 1) if isinstance(v, float) else v for k, v in row.items()})
        for k in totals:
            totals[k] += row[k]
    today = totals["even"] + totals["odd"]
    coarse = totals["even_coarse"] + totals["odd_coarse"]
    record = {
        "volume": args.volume,
        "ratio": args.ratio,
        "steps": args.steps,
        "file_bytes": c.nbytes,
        "psnr": c.report.psnr if c.report else None,
        "levels": rows,
        "bytes_today": round(today),
        "bytes_even_coarse_only": round(totals["even_coarse"] + totals["odd"]),
        "bytes_coarse": round(coarse),
        "saving_percent": round(100 * (today - coarse) / today, 1),
    }
    print(json.dumps(record), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
