"""Where the bytes of a ``--max-error`` file go: network vs correction stream (issue 23).

For each volume and network ratio R a grid network is trained (``compress(vol, ratio=R,
model="grid", steps=S, threads=1)``, no bound) and its stored weights' prediction kept; then,
for each bound (a fraction of the range), the correction stream is coded from that prediction
with each stream version: its bytes, the fraction of voxels that need a nonzero code, and
the bits per corrected voxel. The file at that bound would be network + correction (+ ~10
bytes of header). Predictions are cached in ``--cache`` (float32 .npy), so the coder can be
re-measured without retraining. Step-based, not timed.

    PYTHONPATH=src python benchmarks/research/bound_breakdown.py --volumes ct_head hipct mri4d
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import napari_moec
from _common import load_volume
from napari_moec import correction, correction_codec


def prediction(x: np.ndarray, name: str, ratio: float, steps: int, cache: Path):
    """The stored network's float prediction (data units) and its file bytes and PSNR."""
    stem = cache / f"{name}_{int(ratio)}x_{steps}"
    if stem.with_suffix(".npy").exists():
        meta = json.loads(stem.with_suffix(".json").read_text())
        return np.load(stem.with_suffix(".npy")).astype(np.float64), meta
    c = napari_moec.compress(x, ratio=ratio, model="grid", steps=steps, threads=1)
    values, _ = c._decode(None, 1, None, labels=False)
    y = correction.data_units(values, c.normalization)
    meta = {"network_bytes": c.nbytes, "psnr": c.report.psnr}
    cache.mkdir(parents=True, exist_ok=True)
    np.save(stem.with_suffix(".npy"), y.astype(np.float32))
    stem.with_suffix(".json").write_text(json.dumps(meta))
    return y, meta


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--volumes", nargs="+", default=["ct_head", "hipct", "mri4d"])
    parser.add_argument("--ratios", nargs="+", type=float, default=[8, 16, 32, 64, 256])
    parser.add_argument("--bounds", nargs="+", type=float, default=[0.01, 0.02, 0.05])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--cache", type=Path, default=Path("benchmarks/out/bound_breakdown"))
    args = parser.parse_args(argv)
    print(
        "| volume | R | network B (PSNR) | bound | nonzero | "
        + " | ".join(f"v{v} B (bits/nz)" for v in correction_codec.VERSIONS)
        + " | network + best |"
    )
    print("|---|---|---|---|---|" + "---|" * len(correction_codec.VERSIONS) + "---|")
    for name in args.volumes:
        x = load_volume(name)
        lo, hi = float(x.min()), float(x.max())
        for ratio in args.ratios:
            y, meta = prediction(x, name, ratio, args.steps, args.cache)
            for rel in args.bounds:
                e = rel * (hi - lo)
                step, _ = correction.plan_bound(e, x.dtype, (lo, hi))
                nonzero = np.count_nonzero(np.rint((x - np.clip(y, lo, hi)) / step))
                sizes = [
                    len(correction.encode(x, y, e, version=v)) for v in correction_codec.VERSIONS
                ]
                cells = [f"{n} ({8 * n / max(nonzero, 1):.2f})" for n in sizes]
                print(
                    f"| {name} | {int(ratio)}x | {meta['network_bytes']} ({meta['psnr']}) "
                    f"| {100 * rel:g} % | {nonzero / x.size:.3f} | "
                    + " | ".join(cells)
                    + f" | {meta['network_bytes'] + min(sizes)} |",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
