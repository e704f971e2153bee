"""Decoding a grid model, whole or any region at any stride, in bounded-memory blocks.

Only the interpolation rows of the requested voxels are built (``interp.axis_matrices``), so a
region costs its own voxels plus the one-off entropy decoding of the (small) latent grids and
network. A block of the output is computed at a time (at most ``chunk_voxels``), and a block
of a region gives exactly the rows the whole decode would: separable interpolation has no
state across voxels, so ``decode_region(roi)`` equals the same slice of the full decode.

On a CPU with several torch threads the blocks are shared among as many worker threads, each
computing its blocks on one torch thread: a decode is a chain of small memory-bound ops (the
experts' products of 16 rows, their gathers, the router's maxima), which split across threads
worse than whole blocks do. The macaque, 4 experts top-2, 2 threads (``benchmarks/
grid_decode.py --experts 4``, three processes each): 8.0-8.5 Mvoxel/s with the threads inside
each op, 8.6-10.0 with a block a thread (in one process, alternating: 9.4 against 10.6).
"""

from __future__ import annotations

import itertools
import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from ...decode import grid_shape, parse_roi
from ...sampling import region_coords
from .interp import Region, Selector, axis_matrices
from .model import GridModel
from .payload import GridPayload

__all__ = ["CHUNK_VOXELS", "decode_region", "model_from_payload", "region_of"]

#: Voxels per block: ~40 B per voxel and level on a CPU (features, expert activations).
CHUNK_VOXELS = {"cpu": 1 << 18, "cuda": 1 << 22}
#: Voxels per block when a CPU's blocks go to worker threads: each worker's block stays in
#: its core's cache (2^17 measured fastest of 2^15-2^18 on the macaque, 2 workers).
PARALLEL_CHUNK_VOXELS = 1 << 17


def model_from_payload(payload: GridPayload, device: torch.device | str = "cpu") -> GridModel:
    """A model holding exactly the payload's values (latents = integer x step)."""
    model = GridModel(payload.config)
    with torch.no_grad():
        for p, v in zip(model.grids.latents, payload.latent_values(), strict=True):
            p.copy_(torch.from_numpy(v))
        stored = model.synth.stored()
        for name, v in payload.weight_values().items():
            stored[name].copy_(torch.from_numpy(v))
    return model.to(device).eval()


def region_of(shape: tuple[int, ...], roi=None, stride=1) -> Region:
    """``(start, stop, step)`` per axis of ``roi[::stride]`` (``napari_moec.decode`` rules)."""
    slices = parse_roi(roi, shape)
    grid_shape(shape, roi, stride)  # checks the stride
    strides = (stride,) * len(shape) if isinstance(stride, int) else tuple(stride)
    return tuple((s.start, s.stop, st) for s, st in zip(slices, strides, strict=True))


def _blocks(region: Region, chunk_voxels: int):
    """Sub-regions of at most ``chunk_voxels`` voxels tiling ``region`` (C order)."""
    sizes = [len(range(*r)) for r in region]
    block = [1] * len(sizes)
    room = max(1, chunk_voxels)
    for axis in reversed(range(len(sizes))):  # whole trailing axes first, then part of one
        block[axis] = max(1, min(sizes[axis], room))
        room //= block[axis]
        if block[axis] < sizes[axis]:
            break
    starts = [range(0, n, b) for n, b in zip(sizes, block, strict=True)]
    for corner in itertools.product(*starts):
        sub, where = [], []
        for (start, _, step), c, b, n in zip(region, corner, block, sizes, strict=True):
            end = min(c + b, n)
            sub.append((start + c * step, start + (end - 1) * step + 1, step))
            where.append(slice(c, end))
        yield tuple(sub), tuple(where)


@torch.no_grad()
def decode_region(
    model: GridModel,
    roi=None,
    stride=1,
    *,
    values: bool = True,
    labels: bool = False,
    chunk_voxels: int | None = None,
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Normalised float32 values and/or uint8 top-1 expert labels of ``roi[::stride]``.

    Routing is dropless (every voxel gets its experts). Labels of a 1-expert model are all 0.
    """
    cfg = model.cfg
    region = region_of(cfg.shape, roi, stride)
    out_shape = tuple(len(range(*r)) for r in region)
    device = next(model.parameters()).device
    chunk = chunk_voxels or CHUNK_VOXELS.get(device.type, CHUNK_VOXELS["cuda"])
    out_v = np.empty(out_shape, np.float32) if values else None
    out_l = np.zeros(out_shape, np.uint8) if labels else None
    if labels and not values and cfg.num_experts == 1:
        return None, out_l
    lat = [y.detach() for y in model.grids.latents]
    # The region's rows of every axis matrix, built once; a block takes a slice of them.
    mats = axis_matrices(cfg.shape, cfg.grid_shapes, cfg.kernel, region, device)
    workers = torch.get_num_threads() if device.type == "cpu" else 1
    if math.prod(out_shape) < workers * CHUNK_VOXELS["cpu"]:
        workers = 1  # a small region: a pool costs more than it shares
    if workers > 1 and chunk_voxels is None:
        chunk = PARALLEL_CHUNK_VOXELS
    blocks = list(_blocks(region, chunk))

    @torch.no_grad()  # a worker thread starts with autograd on
    def decode_block(item) -> None:
        sub, where = item
        block = [
            [_rows(m, w, n, device) for m, w, n in zip(level, where, cfg.shape, strict=True)]
            for level in mats
        ]
        f = model.grids.features(lat, block)
        coords = region_coords(cfg.shape, sub, device) if model.needs_coords else None
        bshape = tuple(len(range(*r)) for r in sub)
        if values:
            value, top1 = model.synth.infer(f, coords)
            out_v[where] = value.float().cpu().numpy().reshape(bshape)
            if labels:
                out_l[where] = top1.to(torch.uint8).cpu().numpy().reshape(bshape)
        elif labels:
            top1 = model.synth.labels(f, coords)
            out_l[where] = top1.to(torch.uint8).cpu().numpy().reshape(bshape)

    if workers > 1 and len(blocks) > 1:
        _in_workers(decode_block, blocks, min(workers, len(blocks)))
    else:
        for item in blocks:
            decode_block(item)
    return out_v, out_l


def _in_workers(fn, items, workers: int) -> None:
    """``fn`` on every item, shared among ``workers`` threads of one torch thread each.

    torch's thread count is per thread (OpenMP's), but setting it also sets the default a
    thread created later starts from; the caller's count is put back for those."""
    threads = torch.get_num_threads()
    try:
        with ThreadPoolExecutor(workers, initializer=torch.set_num_threads, initargs=(1,)) as pool:
            for _ in pool.map(fn, items):  # re-raises a worker's error here
                pass
    finally:
        torch.set_num_threads(threads)


def _rows(m: Selector, where: slice, n: int, device) -> Selector:
    """Rows ``where`` of an axis selector (``interp.Selector``; ``None``: the whole axis of a
    grid as fine as the voxels, whose part is its node indices)."""
    if m is None:
        if where == slice(0, n):
            return None
        return torch.arange(n, device=device)[where]
    return m[where]
