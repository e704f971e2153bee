"""Decoding a GridMoE file, whole or any region at any stride (random access).

A region is one ``(start, stop, step)`` per axis. Only the interpolation rows of the requested
voxels are built (``interp.axis_mats``), so the cost is proportional to the voxels decoded
(plus the one-off entropy decoding of the small latent grids and MLP). Large regions are
decoded in slabs along the first axis to bound memory.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .coding import load_model
from .interp import axis_mats
from .model import GridMoE, region_coords

__all__ = ["decode_region", "decode_file", "invert"]


@torch.no_grad()
def decode_region(model: GridMoE, region=None, labels: bool = False,
                  chunk_voxels: int = 1 << 18) -> np.ndarray:
    """Normalised values (or top-1 expert labels) of ``region`` (default: everything)."""
    cfg = model.cfg
    shape = cfg.shape
    region = list(region or [(0, n, 1) for n in shape])
    sizes = [len(range(*r)) for r in region]
    per_slab = max(1, chunk_voxels // max(1, math.prod(sizes[1:])))
    out = []
    lat = [y.detach() for y in model.grids.latents]
    a0 = region[0]
    idx0 = list(range(*a0))
    for i in range(0, len(idx0), per_slab):
        part = idx0[i:i + per_slab]
        reg = [(part[0], part[-1] + 1, a0[2])] + region[1:]
        mats = axis_mats(shape, cfg.grid_shapes, cfg.kernel, reg)
        f = model.grids.features(lat, mats)
        xyz = region_coords(shape, reg) if cfg.needs_coords else None
        if labels:
            out.append(model.synth.labels(f, xyz).numpy().astype(np.uint8))
        else:
            out.append(model.synth(f, xyz)[0].numpy())
    return np.concatenate(out).reshape(sizes)


def invert(values: np.ndarray, dtype: str, vmin: float, vmax: float) -> np.ndarray:
    """[-1, 1] -> intensities in ``dtype``, clipped and rounded like the product."""
    out = (values.astype(np.float64) + 1.0) / 2.0 * (vmax - vmin) + vmin
    out = np.clip(out, vmin, vmax)
    if np.dtype(dtype).kind in "iu":
        out = np.rint(out)
    return out.astype(dtype)


def decode_file(data: bytes, region=None, labels: bool = False) -> np.ndarray:
    model, meta = load_model(data)
    values = decode_region(model, region, labels)
    return values if labels else invert(values, meta["dtype"], meta["vmin"], meta["vmax"])
