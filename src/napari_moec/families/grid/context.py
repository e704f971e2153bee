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
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

__all__ = ["CB_EDGES", "CB_MIN_LATENTS", "N_SLOTS", "context_slots", "even_mask", "uses_cb"]

CB_EDGES = (1, 2, 4, 7)
CB_MIN_LATENTS = 512
#: Model slots of a checkerboard level: 0 for the even latents, then one per odd bucket.
N_SLOTS = 2 + len(CB_EDGES)


def uses_cb(context: str, grid_shape: tuple[int, ...]) -> bool:
    """Whether a level of ``grid_shape`` is coded with checkerboard contexts."""
    return context == "cb" and math.prod(grid_shape) >= CB_MIN_LATENTS


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
