"""Quality metrics, each stated with its data range.

* ``psnr(..., data_range=None)`` uses the reference's own range ``max - min``: what
  docs/benchmarks.md and ../shared/BASELINES.md report, and the honest choice for data that use
  a fraction of their dtype (the HiP-CT block spans 7437 of 65535 levels).
* ``psnr(..., data_range="dtype")`` uses the dtype's maximum (65535 for uint16), which is what
  the MoEC and TINC papers report; it reads ~19 dB higher on that block. Always labelled as such.
* ``ssim`` is 3D SSIM with skimage's defaults (7^3 uniform window, K1=0.01, K2=0.03, sample
  covariance, border of 3 cropped), averaged over the leading axis of 4D volumes.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["SSIM_WINDOW", "psnr", "ssim", "ssim_applies", "ssim_map"]

#: Side of SSIM's cubic window (skimage's default): volumes thinner than this have no SSIM.
SSIM_WINDOW = 7


def _data_range(reference: np.ndarray, data_range) -> float:
    if data_range is None:
        return float(reference.max()) - float(reference.min())
    if data_range == "dtype":
        if reference.dtype.kind in "iu":
            return float(np.iinfo(reference.dtype).max)
        return float(reference.max())
    return float(data_range)


def psnr(reference: np.ndarray, test: np.ndarray, data_range=None) -> float:
    """Peak signal-to-noise ratio in dB (inf for identical arrays)."""
    mse = np.mean((reference.astype(np.float64) - test.astype(np.float64)) ** 2)
    if mse == 0:
        return float("inf")
    return float(10.0 * np.log10(_data_range(reference, data_range) ** 2 / mse))


def ssim_applies(shape) -> bool:
    """Whether a volume of ``shape`` is thick enough for 3D SSIM (every spatial side >= 7)."""
    return min(shape[-3:]) >= SSIM_WINDOW


def ssim(
    reference: np.ndarray, test: np.ndarray, data_range=None, win_size: int = SSIM_WINDOW
) -> float:
    """Mean structural similarity over 3D windows (see module docstring)."""
    if reference.ndim == 4:
        return float(
            np.mean(
                [ssim(r, t, data_range, win_size) for r, t in zip(reference, test, strict=True)]
            )
        )
    if min(reference.shape) < win_size:
        raise ValueError(f"volume {reference.shape} is smaller than the SSIM window {win_size}")
    L = _data_range(reference, data_range)
    return float(ssim_map(reference, test, L, win_size).mean())


def ssim_map(
    reference: np.ndarray, test: np.ndarray, data_range: float, win_size: int = SSIM_WINDOW
) -> torch.Tensor:
    """The SSIM of every ``win_size``³ window of two 3D volumes (float64, one value per window
    position, sample covariances as in scikit-image). :func:`ssim` is its mean; the streaming
    comparison sums it block by block."""
    x = torch.from_numpy(reference.astype(np.float64))[None, None]
    y = torch.from_numpy(test.astype(np.float64))[None, None]

    def mean(v):
        return F.avg_pool3d(v, win_size, stride=1)

    n = win_size**3
    cov = n / (n - 1.0)
    ux, uy = mean(x), mean(y)
    vx = cov * (mean(x * x) - ux * ux)
    vy = cov * (mean(y * y) - uy * uy)
    vxy = cov * (mean(x * y) - ux * uy)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
    return s[0, 0]
