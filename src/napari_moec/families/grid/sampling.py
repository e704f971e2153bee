"""Which voxels a training step of a large volume sees (see :mod:`.train`).

Both return one index tensor per axis (on the generator's device): the step trains on their
outer product, so the interpolation stays separable (rows of the full axis matrices).
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["box_rows", "stride_rows"]


def stride_rows(
    shape: tuple[int, ...], max_voxels: int, gen: torch.Generator
) -> list[torch.Tensor]:
    """Per axis, one random index in each cell of its stride; strides grow on the axis with the
    most samples until the subset has at most ``max_voxels`` voxels."""
    strides = [1] * len(shape)
    counts = list(shape)
    while math.prod(counts) > max_voxels:
        axis = int(np.argmax(counts))
        strides[axis] += 1
        counts[axis] = math.ceil(shape[axis] / strides[axis])
    dev = gen.device
    return [
        (
            torch.arange(c, device=dev) * s + torch.randint(0, s, (c,), generator=gen, device=dev)
        ).clamp(max=n - 1)
        for n, s, c in zip(shape, strides, counts, strict=True)
    ]


def box_rows(shape: tuple[int, ...], max_voxels: int, gen: torch.Generator) -> list[torch.Tensor]:
    """The prototype's random box of about ``max_voxels`` voxels (kept to measure against)."""
    f = (max_voxels / math.prod(shape)) ** (1 / len(shape))
    box = [max(1, min(n, round(n * f))) for n in shape]
    dev = gen.device
    return [
        int(torch.randint(0, n - b + 1, (1,), generator=gen, device=dev))
        + torch.arange(b, device=dev)
        for n, b in zip(shape, box, strict=True)
    ]
