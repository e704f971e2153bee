"""Evaluate a trained network on any region and stride of the voxel grid, in bounded memory.

An INR is random access: the coordinates of voxels ``roi[::stride]`` are the same ones the full
grid would use (see ``sampling``), so a region or a coarse preview costs only its own voxels and
equals the matching slice of the full decode, up to float rounding: BLAS kernels sum in an
order that depends on the batch size, so a value can differ in its last bit (~1e-7 of the
range), which after rounding to an integer dtype moves a rare voxel by one level.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from .errors import ConfigError
from .families.siren.moe import MoESiren
from .sampling import axis_coords

__all__ = ["evaluate", "evaluate_with_labels", "grid_shape", "parse_roi"]

#: Voxels per forward pass when decoding, by device type. On a CPU small chunks keep every
#: activation in the allocator's heap and in cache: 16k voxels decoded 1.5x faster than 128k
#: (width 35, one thread), whose 18 MB activations are mapped and page-faulted afresh each
#: chunk. A GPU needs large chunks to fill it; 1M voxels bound memory at ~0.5 GB for width 64.
CHUNK_VOXELS = {"cpu": 1 << 14, "cuda": 1 << 20}


def parse_roi(roi, shape: Sequence[int]) -> tuple[slice, ...]:
    """Normalise ``roi`` to one ``slice(start, stop)`` per axis.

    Accepts None (everything), a string like ``"10:20,:,5:"`` (one entry per axis, empty
    entries mean the whole axis), or a sequence of slices / ``(start, stop)`` pairs / None.
    """
    if roi is None:
        return tuple(slice(0, n) for n in shape)
    if isinstance(roi, str):
        parts = [p.strip() for p in roi.split(",")]
        items = []
        for part in parts:
            if part in ("", ":"):
                items.append(None)
                continue
            bounds = part.split(":")
            if len(bounds) != 2:
                raise ConfigError(f"ROI entry {part!r} is not of the form start:stop")
            try:
                items.append(tuple(int(b) if b.strip() else None for b in bounds))
            except ValueError:
                raise ConfigError(f"ROI entry {part!r} is not of the form start:stop") from None
        roi = items
    if len(roi) != len(shape):
        raise ConfigError(f"ROI has {len(roi)} axes, the volume has {len(shape)}")
    out = []
    for item, n in zip(roi, shape, strict=True):
        if item is None:
            item = slice(None)
        elif not isinstance(item, slice):
            item = slice(*item)
        if item.step not in (None, 1):
            raise ConfigError("ROI slices take no step; use stride")
        start, stop, _ = item.indices(n)
        if start >= stop:
            raise ConfigError(f"empty ROI {item} on an axis of {n} voxels")
        out.append(slice(start, stop))
    return tuple(out)


def _strides(stride, ndim: int) -> tuple[int, ...]:
    strides = (stride,) * ndim if isinstance(stride, int) else tuple(stride)
    if len(strides) != ndim or any(not isinstance(s, int) or s < 1 for s in strides):
        raise ConfigError(f"stride must be a positive integer or one per axis, got {stride!r}")
    return strides


def grid_shape(shape: Sequence[int], roi=None, stride=1) -> tuple[int, ...]:
    """Shape of the grid ``roi[::stride]`` of a volume of ``shape`` (no decoding)."""
    slices = parse_roi(roi, shape)
    strides = _strides(stride, len(shape))
    return tuple(len(range(s.start, s.stop, st)) for s, st in zip(slices, strides, strict=True))


@torch.no_grad()
def evaluate(
    model: MoESiren,
    shape: Sequence[int],
    roi=None,
    stride=1,
    *,
    labels: bool = False,
    device: torch.device | str | None = None,
    chunk_voxels: int | None = None,
) -> np.ndarray:
    """Network output on ``roi[::stride]``: normalised float32 values, or top-1 expert labels
    (uint8) with ``labels=True``. Routing is dropless: every voxel gets its experts."""
    kind = "labels" if labels else "values"
    return _evaluate(model, shape, roi, stride, kind, device, chunk_voxels)[kind == "labels"]


@torch.no_grad()
def evaluate_with_labels(
    model: MoESiren,
    shape: Sequence[int],
    roi=None,
    stride=1,
    *,
    device: torch.device | str | None = None,
    chunk_voxels: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Values and labels of :func:`evaluate` from one pass of the network (the encoder and
    router run once for both)."""
    return _evaluate(model, shape, roi, stride, "both", device, chunk_voxels)


def _evaluate(model, shape, roi, stride, kind, device, chunk_voxels):
    slices = parse_roi(roi, shape)
    strides = _strides(stride, len(shape))
    axes = [
        axis_coords(n, s.start, s.stop, st) for n, s, st in zip(shape, slices, strides, strict=True)
    ]
    out_shape = tuple(len(a) for a in axes)
    total = math.prod(out_shape)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    if chunk_voxels is None:
        chunk_voxels = CHUNK_VOXELS.get(device.type, CHUNK_VOXELS["cuda"])
    axes_t = [torch.from_numpy(a).to(device) for a in axes]
    values = np.empty(total, dtype=np.float32) if kind != "labels" else None
    labels = np.empty(total, dtype=np.uint8) if kind != "values" else None
    was_training = model.training
    model.eval()
    try:
        for begin in range(0, total, chunk_voxels):
            flat = torch.arange(begin, min(begin + chunk_voxels, total), device=device)
            coords = []
            for size, a in zip(reversed(out_shape), reversed(axes_t), strict=True):
                coords.append(a[flat % size])
                flat = torch.div(flat, size, rounding_mode="floor")
            x = torch.stack(coords[::-1], dim=1)
            end = begin + x.shape[0]
            if kind == "labels":
                labels[begin:end] = model.expert_labels(x).to(torch.uint8).cpu().numpy()
            elif kind == "values":
                values[begin:end] = model(x).value[:, 0].cpu().numpy()
            else:
                value, top1 = model.decode(x)
                values[begin:end] = value[:, 0].cpu().numpy()
                labels[begin:end] = top1.to(torch.uint8).cpu().numpy()
    finally:
        model.train(was_training)
    return (
        None if values is None else values.reshape(out_shape),
        None if labels is None else labels.reshape(out_shape),
    )
