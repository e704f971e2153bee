"""Bytes of the ``--max-error`` correction stream (issue 23) against SZ3 at the same bound.

The model is not in the loop: a stand-in prediction (a Gaussian blur, sigma 1.5 voxels, or a
4x block-mean downsample upsampled trilinearly) plays the network's role, so the numbers say
how the *correction coder* fares on realistic residuals, not what a trained file costs.
SZ3 (``pip install pysz``) codes the same volume at the same absolute bound, as float32 (its
integer path is int32/int64; float32 holds every uint16/int16 value exactly).

    PYTHONPATH=src python benchmarks/research/correction_bytes.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import tifffile
from scipy import ndimage

from napari_moec import correction

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
VOLUMES = (
    "hipct_brain_sci_64.tif",
    "ct_head_vtk_headsq.tif",
    "mri_4d_epi_nibabel_afni_example4d.tif",
    "mri_t1_macaque_inia19_mricron.tif",
)


def blur(x: np.ndarray) -> np.ndarray:
    sigma = (0,) * (x.ndim - 3) + (1.5, 1.5, 1.5)
    return ndimage.gaussian_filter(x.astype(np.float64), sigma)


def down_up(x: np.ndarray, f: int = 4) -> np.ndarray:
    out = np.empty(x.shape)
    for idx in np.ndindex(*x.shape[:-3]):
        v = x[idx].astype(np.float64)
        pad = [(0, (-n) % f) for n in v.shape]
        p = np.pad(v, pad, mode="edge")
        s = p.reshape(p.shape[0] // f, f, p.shape[1] // f, f, p.shape[2] // f, f).mean((1, 3, 5))
        grid = np.meshgrid(*[(np.arange(n) + 0.5) / f - 0.5 for n in v.shape], indexing="ij")
        out[idx] = ndimage.map_coordinates(s, grid, order=1, mode="nearest")
    return out


def sz3_bytes(x: np.ndarray, bound: float) -> int | None:
    try:
        from pysz import sz, szConfig, szErrorBoundMode
    except ImportError:
        return None
    data = np.ascontiguousarray(x, dtype=np.float32)
    config = szConfig(data.shape)
    config.errorBoundMode = szErrorBoundMode.ABS
    # An integer decode rounds SZ3's float output: |x - rint(v)| <= floor(E) whenever
    # |x - v| < floor(E) + 1/2, the slack the correction layer also uses.
    config.absErrorBound = np.floor(bound) + 0.49 if x.dtype.kind in "iu" else bound
    packed, _ = sz.compress(data, config)
    back, _ = sz.decompress(packed, np.float32, data.shape)
    if x.dtype.kind in "iu":
        back = np.rint(back)
    assert np.abs(back.astype(np.float64) - x).max() <= bound, "SZ3 missed its bound"
    return packed.nbytes


def main() -> int:
    print("volume | dtype | bound % range | E | blur B | blur bpv | down-up B | SZ3 B")
    for name in VOLUMES:
        x = tifffile.imread(DATA / name)
        width = float(x.max()) - float(x.min())
        predictions = (blur(x), down_up(x))
        for rel in (0.01, 0.02, 0.03, 0.04, 0.05):
            e = rel * width
            sizes = [len(correction.encode(x, y, e)) for y in predictions]
            row = [name.split("_")[0], str(x.dtype), f"{100 * rel:.0f}", f"{e:.4g}"]
            row += [str(sizes[0]), f"{8 * sizes[0] / x.size:.3f}", str(sizes[1])]
            row.append(str(sz3_bytes(x, e)))
            print(" | ".join(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
