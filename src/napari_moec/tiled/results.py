"""What one tile cost and how well it decodes: the record a worker returns, the run's log
keeps (:class:`~.store.ResultsLog`) and the report sums. Its own module so that the store
(which reads the log) and the task (which makes the records) do not import each other.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .tileformat import TileSpec

__all__ = ["TileResult", "tile_errors"]


@dataclass(frozen=True)
class TileResult:
    """What a tile cost and how well it decodes (squared errors over the volume's range)."""

    index: tuple[int, ...]
    kind: str
    nbytes: int
    hidden: int = 0
    experts: int = 0
    steps: int = 0
    seconds: float = 0.0
    multiplier: float = 1.0
    voxels: int = 0
    sse: float = 0.0
    face_voxels: int = 0
    face_sse: float = 0.0
    peak_rss: int = 0
    #: In a store with a bound: the largest error measured on the tile as written (data
    #: units), and the bytes of its correction stream.
    max_error: float | None = None
    correction_bytes: int = 0
    #: Seconds from the task's start to its chunk written (``seconds`` is the training's
    #: part; the rest is the tile's overhead: read, rate fit, correction, encode, write).
    wall_seconds: float = 0.0
    #: Resident memory of the worker while the tile ran (:class:`~.memory.MemoryWatch`):
    #: anonymous at the tile's start and at its peak, and the peak of file-backed pages.
    baseline_anon: int = 0
    peak_anon: int = 0
    peak_file: int = 0
    #: The worker's exact resident peak (anonymous + file-backed) while the tile ran, and its
    #: resident size at the tile's start (0 where the kernel's high-water mark is unavailable).
    peak_resident: int = 0
    baseline_resident: int = 0
    #: The payload bytes the allocator gave the tile (``nbytes`` is its chunk as written:
    #: the payload, the tile's header and any correction stream).
    payload_budget: int = 0


def face_mask(spec: TileSpec, index) -> np.ndarray:
    """Boolean mask (the tile's shape) of its faces: the voxel layers it shares with a
    neighbouring tile (where seams would show)."""
    slices = spec.grid.tile_slices(index)
    face = np.zeros([s.stop - s.start for s in slices], dtype=bool)
    for axis, (s, n) in enumerate(zip(slices, spec.grid.shape, strict=True)):
        view = np.moveaxis(face, axis, 0)
        if s.start > 0:
            view[0] = True
        if s.stop < n:
            view[-1] = True
    return face


def tile_errors(spec: TileSpec, index, original: np.ndarray, decoded: np.ndarray):
    """(sse, face_sse, face_voxels) of a tile over the volume's range (faces: :func:`face_mask`)."""
    span = spec.values.vmax - spec.values.vmin
    err = ((decoded.astype(np.float64) - original.astype(np.float64)) / span) ** 2
    face = face_mask(spec, index)
    return float(err.sum()), float(err[face].sum()), int(face.sum())
