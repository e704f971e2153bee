"""One tile, compressed where a Dask worker runs it: read the tile and its margin, train its
network (the core's training loop), store it at the finest quantization that fits its byte
share, measure it as a reader will decode it, write its chunk atomically.

Nothing here talks to the scheduler except :class:`Signals`, which lets the client's stop and
pause reach a tile that is training: the task looks at two Dask ``Event``s about once a second.
A stopped tile writes nothing (the next run redoes it); a tile whose worker dies is rerun by the
scheduler, and since a chunk appears only by an atomic rename, no half tile is ever left.
"""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..config import ArchConfig, RunConfig, TrainConfig
from ..errors import MoecError
from ..rate import fit_payload
from ..sampling import Normalization
from ..training import Compressor
from .allocate import TilePlan
from .sources import SourceRef
from .store import chunk_path, write_atomic
from .tiledecode import decode_tile
from .tileformat import TileSpec, encode_network_tile

__all__ = ["Signals", "TileJob", "TileResult", "TileStopped", "compress_tile", "tile_errors"]

#: Seconds of training between looks at the stop/pause events.
CHECK_EVERY = 1.0


class TileStopped(MoecError):
    """The run was stopped while this tile was training; nothing was written."""


@dataclass(frozen=True)
class Signals:
    """Names of the Dask events that stop or pause a run (None: not under Dask)."""

    stop: str
    pause: str

    def check(self) -> None:
        """Raise TileStopped when stopped; block while paused."""
        from distributed import Event

        stop, pause = Event(self.stop), Event(self.pause)
        while True:
            if stop.is_set():
                raise TileStopped("stopped")
            if not pause.is_set():
                return
            time.sleep(0.5)


@dataclass(frozen=True)
class TileJob:
    """Everything a worker needs for one network tile (small and picklable)."""

    spec: TileSpec
    plan: TilePlan
    root: str
    train: TrainConfig
    run: RunConfig
    source: SourceRef | None = None
    signals: Signals | None = None
    hook: Callable | None = None


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


def tile_errors(spec: TileSpec, index, original: np.ndarray, decoded: np.ndarray):
    """(sse, face_sse, face_voxels) of a tile over the volume's range; faces are the voxel
    layers the tile shares with a neighbouring tile (where seams would show)."""
    span = spec.vmax - spec.vmin
    err = ((decoded.astype(np.float64) - original.astype(np.float64)) / span) ** 2
    face = np.zeros(err.shape, dtype=bool)
    for axis, (s, n) in enumerate(zip(spec.tile_slices(index), spec.shape, strict=True)):
        view = np.moveaxis(face, axis, 0)
        if s.start > 0:
            view[0] = True
        if s.stop < n:
            view[-1] = True
    return float(err.sum()), float(err[face].sum()), int(face.sum())


def _peak_rss() -> int:
    """Peak resident memory of this process, bytes (the worker's high-water mark)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def compress_tile(job: TileJob, region: np.ndarray | None = None) -> TileResult:
    """Train, store and measure one network tile; ``region`` is its voxels plus margin when the
    client sent them, else they are read from ``job.source``."""
    spec, plan = job.spec, job.plan
    if job.hook is not None:
        job.hook(job)
    if job.signals is not None:
        job.signals.check()
    if region is None:
        region = job.source.read(spec.region_slices(plan.index))
    model_config = spec.model_config(plan.hidden, plan.experts)
    compressor = Compressor(
        region,
        1.0,
        arch=ArchConfig(
            num_experts=plan.experts,
            top_k=model_config.top_k,
            expert_layers=spec.expert_layers,
            hidden_features=plan.hidden,
            w0=spec.w0,
            w0_first=model_config.w0_first,
        ),
        train=job.train,
        quant=spec.quant,
        run=job.run,
    )
    if compressor.model_config != model_config:
        raise MoecError(f"the core sized {compressor.model_config}, the tile spec {model_config}")
    # All tiles share the volume's normalisation, stated once in the store's metadata.
    compressor.normalization = Normalization(spec.vmin, spec.vmax, *spec.norm)
    threads = torch.get_num_threads()
    torch.set_num_threads(compressor.threads)
    try:
        model, steps, seconds = _train(compressor, job.signals)
        state = {k: v.detach().cpu() for k, v in model.layout_state().items()}
        # One grid for every tensor: the per-group precision of single volumes
        # (rate.REFINED_GROUPS) has not been measured on tiles, and costs ~0.5 s a tile.
        payload, multiplier, _ = fit_payload(model_config, spec.quant, state, plan.payload_budget)
        data = encode_network_tile(spec, plan.index, model_config, payload)
        original = region[spec.tile_in_region(plan.index)]
        axes = [np.arange(n) for n in original.shape]
        decoded = decode_tile(spec, data, axes, expected_index=plan.index)
    finally:
        torch.set_num_threads(threads)
    sse, face_sse, face_voxels = tile_errors(spec, plan.index, original, decoded)
    write_atomic(chunk_path(Path(job.root), plan.index), data)
    return TileResult(
        index=plan.index,
        kind="network",
        nbytes=len(data),
        hidden=plan.hidden,
        experts=plan.experts,
        steps=steps,
        seconds=seconds,
        multiplier=multiplier,
        voxels=original.size,
        sse=sse,
        face_voxels=face_voxels,
        face_sse=face_sse,
        peak_rss=_peak_rss(),
    )


def _train(compressor: Compressor, signals: Signals | None):
    """Drain the core's training loop, looking at the run's signals about once a second."""
    run = compressor.train()
    last = time.monotonic()
    while True:
        try:
            next(run)
        except StopIteration as done:
            return done.value
        if signals is not None and time.monotonic() - last >= CHECK_EVERY:
            signals.check()
            last = time.monotonic()
