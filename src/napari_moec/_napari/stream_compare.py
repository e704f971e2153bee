"""Compare on data that does not fit in memory: PSNR and 3D SSIM block by block, in bounded
memory, and a difference volume decoded on demand.

The same numbers as :func:`napari_moec.metrics.psnr` and :func:`~napari_moec.metrics.ssim` on
the whole volume (tested): PSNR sums squared errors over blocks and uses the original's range
seen on the way; SSIM sums its map over blocks that overlap by ``SSIM_WINDOW - 1`` voxels, each
window counted once, in the block where it starts. Memory is a few arrays of one block (at most
:data:`BLOCK`\\ ³ voxels plus the overlap), whatever the volume. Runs in a napari worker: a
generator that yields :class:`CompareProgress` and returns a :class:`~.widget_run.Comparison`.
"""

from __future__ import annotations

import math
from collections.abc import Generator
from dataclasses import dataclass
from itertools import product

import numpy as np

from ..metrics import SSIM_WINDOW, ssim_applies, ssim_map
from .lazy import LazyVolume, pyramid
from .lazy_blocks import DifferenceBlocks

__all__ = ["BLOCK", "CompareProgress", "StreamComparison", "stream_compare"]

#: Edge of a comparison block (spatial axes): at most the tile, so each tile decodes in parts
#: and SSIM's float64 maps stay ~30 MB.
BLOCK = 64


@dataclass(frozen=True)
class CompareProgress:
    """Blocks compared so far, of ``total``."""

    done: int
    total: int


@dataclass(frozen=True)
class StreamComparison:
    """Original vs decompressed, measured block by block. ``difference`` is a lazy multiscale
    pyramid (decoded - original, float32); ``max_abs`` its largest magnitude."""

    psnr: float
    ssim: float | None
    difference: list
    max_abs: float


def _ssim_sum(x: np.ndarray, y: np.ndarray, data_range: float, starts: tuple[int, ...]):
    """Sum and count of the SSIM map (``metrics.ssim``'s formula) over the windows of the 3D
    blocks ``x``, ``y`` whose first voxel lies in ``[0, starts)`` per axis."""
    s = ssim_map(x, y, data_range)
    s = s[tuple(slice(0, k) for k in starts)]
    return float(s.sum()), s.numel()


def _blocks(shape: tuple[int, ...], block: tuple[int, ...]):
    """Per axis the ``(start, stop)`` of each block."""
    return [[(b, min(b + e, n)) for b in range(0, n, e)] for n, e in zip(shape, block, strict=True)]


def stream_compare(
    original, decoded_blocks, data_range: float
) -> Generator[CompareProgress, None, StreamComparison]:
    """Compare ``original`` (any array-like: numpy, dask, zarr, lazy; read one block at a time)
    with the volume of ``decoded_blocks`` (:mod:`._lazy_blocks`).

    Parameters
    ----------
    data_range
        SSIM's L: the original's value range (stored with the compressed volume, so known
        before reading it).
    """
    shape = tuple(decoded_blocks.shape)
    ndim = len(shape)
    lead = ndim - 3
    decoded = LazyVolume(decoded_blocks, cache=None)  # a full pass: keep the cache for browsing
    block = (1,) * lead + tuple(min(BLOCK, t) for t in decoded_blocks.block[-3:])
    with_ssim = ssim_applies(shape)
    win = SSIM_WINDOW
    sse, count, lo, hi, max_abs = 0.0, 0, math.inf, -math.inf, 0.0
    ssim_sum, ssim_count = 0.0, 0
    ranges = _blocks(shape, block)
    total = math.prod(len(r) for r in ranges)
    for done, box in enumerate(product(*ranges), 1):
        core = tuple(slice(a, b) for a, b in box)
        # SSIM windows starting in the block need win - 1 more voxels on the high side.
        spatial = zip(core[lead:], shape[lead:], strict=True)
        extended = core[:lead] + tuple(slice(s.start, min(s.stop + win - 1, n)) for s, n in spatial)
        x = np.asarray(original[extended])
        y = decoded[extended].read()
        inner = tuple(slice(0, s.stop - s.start) for s in core)
        xc, yc = x[inner].astype(np.float64), y[inner].astype(np.float64)
        diff = yc - xc
        sse += float(np.square(diff).sum())
        count += diff.size
        lo, hi = min(lo, float(xc.min())), max(hi, float(xc.max()))
        max_abs = max(max_abs, float(np.abs(diff).max()))
        if with_ssim:
            starts = tuple(min(s.stop, n - win + 1) - s.start
                           for s, n in zip(core[lead:], shape[lead:], strict=True))  # fmt: skip
            if min(starts) > 0:
                for t in np.ndindex(*x.shape[:lead]):
                    part_sum, part_count = _ssim_sum(x[t], y[t], data_range, starts)
                    ssim_sum += part_sum
                    ssim_count += part_count
        yield CompareProgress(done, total)
    mse = sse / count
    span = hi - lo
    psnr = math.inf if mse == 0 else 10.0 * math.log10(span**2 / mse)
    ssim = ssim_sum / ssim_count if with_ssim and ssim_count else None
    difference = pyramid(DifferenceBlocks(decoded_blocks, original))
    return StreamComparison(psnr, ssim, difference, max_abs)
