"""The checkerboard context of the latent entropy model, for numpy (the coder) and torch
(the rate proxy in training) from one piece of code.

Latents of even index parity (sum of indices even) are coded first with their level's model.
Each odd latent is coded with a model chosen by the bucket of ``sum |q|`` over its ``2 ndim``
face neighbours, which are all even, hence already decoded: a decoder needs two vectorised
passes per level and no per-symbol loop (unlike Cool-chic's autoregressive context model).
Bucket edges (1, 2, 4, 7) give the buckets {0}, {1}, {2,3}, {4..6}, {7+}; offline, on a trained
hipct 64x file, this cut the latent bytes by 11% against one model per level (REPORT.md 5).

Levels with fewer than ``CB_MIN_LATENTS`` latents are coded with one model: 5 more model bytes
would cost more than they save.

``"cbc"`` (checkerboard + coarse) conditions the even latents too, on the next coarser level
(decoded first: a ``"cbc"`` payload runs coarsest level first): each even latent's model is
chosen by the bucket of ``sum |q|`` over the 2^ndim coarser nodes around it (grids share
their corners, so fine node ``i`` of ``n`` lies between coarse nodes ``floor(i (m-1)/(n-1))``
and the next), at the same edges. Where the checkerboard leaves half of every level without a
context, this measured offline (``benchmarks/research/coarse_context.py``, session 24) 25 %
fewer latent bytes on the macaque at 256x and 10 % on ct_head at 64x: the background, zero on
both levels, is cheap again. The odd latents keep the checkerboard's buckets. The coarsest
level has no coarser one and is coded as ``"cb"`` codes it.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

__all__ = [
    "CBC_SLOTS",
    "CB_EDGES",
    "CB_MIN_LATENTS",
    "N_SLOTS",
    "coarse_slots",
    "context_slots",
    "even_mask",
    "level_kind",
    "level_order",
    "slot_count",
]

CB_EDGES = (1, 2, 4, 7)
CB_MIN_LATENTS = 512
#: Model slots of a checkerboard level: 0 for the even latents, then one per odd bucket.
N_SLOTS = 2 + len(CB_EDGES)
#: Model slots of a ``"cbc"`` level: one per coarse bucket of the even latents, then the
#: checkerboard's odd buckets.
CBC_SLOTS = 2 * (1 + len(CB_EDGES))


def level_kind(context: str, grid_shape: tuple[int, ...], coarsest: bool) -> str:
    """How a payload codes the latents of a level of ``grid_shape`` (``coarsest``: the
    model's last level), and so which groups the rate proxy models:

    * ``"cbc"``: the checkerboard's groups with the even latents grouped by the next coarser
      level (every level of a ``"cbc"`` model but its coarsest);
    * ``"cb"``: the checkerboard's six groups (a ``"cb"`` level, or a ``"cbc"`` model's
      coarsest, which has no coarser level to read);
    * ``"lin"``: the learned context (:mod:`.learned`);
    * ``"one"``: one model for the level (context ``"none"``, or fewer than
      ``CB_MIN_LATENTS`` latents, whose groups' model bytes would not pay).

    The one place this is decided: the coder (``payload``), its operation count
    (``learned.decode_ops``) and the rate proxy (``model.LatentGrids``) all ask it."""
    if math.prod(grid_shape) < CB_MIN_LATENTS or context == "none":
        return "one"
    if context == "cbc":
        return "cb" if coarsest else "cbc"
    return context


def slot_count(context: str) -> int:
    """Slots a level's rate-proxy scale table has for ``context``."""
    return CBC_SLOTS if context == "cbc" else N_SLOTS


def level_order(context: str, num_levels: int) -> list[int]:
    """The order a payload codes its levels in: coarsest first for ``"cbc"`` (a level's
    context reads the coarser one), finest first otherwise (the bytes before ``"cbc"``)."""
    levels = list(range(num_levels))
    return levels[::-1] if context == "cbc" else levels


def _take(a, index, axis: int):
    if isinstance(a, np.ndarray):
        return np.take(a, index, axis=axis)
    return a.index_select(axis, index)


def coarse_buckets(fine_shape: tuple[int, ...], coarse_magnitude):
    """Bucket (0-4, at ``CB_EDGES``) of ``sum |q|`` over the 2^ndim nodes of the coarser
    level (``coarse_magnitude``: ``|q|``, numpy or torch) around each node of a level of
    ``fine_shape``. Integer index arithmetic, so numpy and torch agree exactly."""
    torch_like = not isinstance(coarse_magnitude, np.ndarray)
    total = coarse_magnitude  # the corners' sum is separable: lo + hi along each axis
    for axis, (n, m) in enumerate(zip(fine_shape, coarse_magnitude.shape, strict=True)):
        lo = (np.arange(n, dtype=np.int64) * (m - 1)) // max(n - 1, 1)
        hi = np.minimum(lo + 1, m - 1)
        if torch_like:  # (no torch import: the coder's side stays torch-free)
            lo, hi = (coarse_magnitude.new_tensor(v).long() for v in (lo, hi))
        total = _take(total, lo, axis) + _take(total, hi, axis)
    return sum((total >= edge) * 1 for edge in CB_EDGES)


def coarse_slots(magnitude, even, coarse_magnitude):
    """Model slot of every latent of a ``"cbc"`` level: the coarse bucket of an even latent
    (0-4, :func:`coarse_buckets`), ``5 + `` the checkerboard bucket of an odd one
    (:func:`context_slots`)."""
    buckets = coarse_buckets(tuple(magnitude.shape), coarse_magnitude)
    odd = context_slots(magnitude, even)  # 0 on even latents, 1 + bucket on odd ones
    return buckets * even + (odd + (N_SLOTS - 2)) * (~even)


@lru_cache(maxsize=16)
def even_mask(grid_shape: tuple[int, ...]) -> np.ndarray:
    """Boolean mask of the even-parity nodes of a grid (read-only, cached; 1 byte a node)."""
    odd = np.zeros(grid_shape, dtype=bool)
    for axis, n in enumerate(grid_shape):
        odd ^= (np.arange(n) % 2 == 1).reshape(
            [-1 if k == axis else 1 for k in range(len(grid_shape))]
        )
    mask = ~odd
    mask.flags.writeable = False
    return mask


def context_slots(magnitude, even):
    """Model slot of every latent: 0 where ``even``, else ``1 + bucket`` of the neighbours' sum.

    ``magnitude`` is ``|q|`` of the rounded latents (numpy or torch, integer or float) and
    ``even`` the boolean mask of :func:`even_mask` as the same kind of array; only operators
    and slicing that numpy and torch share are used, so both give identical slots.
    """
    a = magnitude * even
    total = a * 0
    for axis in range(a.ndim):
        lead = (slice(None),) * axis
        total[(*lead, slice(1, None))] += a[(*lead, slice(None, -1))]
        total[(*lead, slice(None, -1))] += a[(*lead, slice(1, None))]
    bucket = sum((total >= edge) * 1 for edge in CB_EDGES)
    return (1 + bucket) * (~even)
