"""One tile, compressed where a Dask worker runs it: read the tile and its margin, train its
network (the core's :func:`~napari_moec.training.train`: no ratio and no plan, the allocator
sized it), store it at the finest quantization that fits its byte share (the family's rate
control), measure it as a reader will decode it, write its chunk atomically.

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

from .. import families
from ..config import RunConfig, TrainConfig
from ..devices import check_threads, resolve_device
from ..errors import MoecError
from ..families.base import TrainingTarget
from ..families.siren.tutel_backend import resolve_backend, use_backend
from ..generators import drain
from ..sampling import Normalization
from ..training import train
from .allocate import TilePlan
from .results import TileResult, tile_errors
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
        region = job.source.read(spec.grid.region_slices(plan.index))
    model_config = spec.model_config(plan.hidden, plan.experts)
    family = families.get("siren")  # the tile stream holds SIREN networks (tileformat)
    device = resolve_device(job.run.device)
    threads = check_threads(job.run.threads)
    backend = resolve_backend(job.run.backend, device, threads)
    seed = job.train.seed
    # All tiles share the volume's normalisation, stated once in the store's metadata.
    normalization = Normalization(spec.values.vmin, spec.values.vmax, *spec.values.norm)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        model = family.build(model_config, generator=torch.Generator().manual_seed(seed))
        model = model.to(device)
        use_backend(model, backend)
        values = torch.from_numpy(normalization.apply(region).reshape(-1)).to(device)
        training = train(
            TrainingTarget(values, region.shape, spec.values.norm),
            model,
            job.train,
            device=device,
            generator=torch.Generator(device=device).manual_seed(seed),
            family=family,
            config=model_config,
            quant=spec.networks.quant,
            budget=plan.payload_budget,
        )
        trained = drain(training, _signal_check(job.signals))
        # One grid for every tensor: the per-group precision of single volumes
        # (rate.REFINED_GROUPS) has not been measured on tiles, and costs ~0.5 s a tile.
        payload, multiplier, _ = family.fit_payload(
            trained.model, model_config, spec.networks.quant, plan.payload_budget
        )
        data = encode_network_tile(spec, plan.index, model_config, payload)
        original = region[spec.grid.tile_in_region(plan.index)]
        axes = [np.arange(n) for n in original.shape]
        decoded = decode_tile(spec, data, axes, expected_index=plan.index)
    finally:
        torch.set_num_threads(previous_threads)
    sse, face_sse, face_voxels = tile_errors(spec, plan.index, original, decoded)
    write_atomic(chunk_path(Path(job.root), plan.index), data)
    return TileResult(
        index=plan.index,
        kind="network",
        nbytes=len(data),
        hidden=plan.hidden,
        experts=plan.experts,
        steps=trained.steps,
        seconds=trained.seconds,
        multiplier=multiplier,
        voxels=original.size,
        sse=sse,
        face_voxels=face_voxels,
        face_sse=face_sse,
        peak_rss=_peak_rss(),
    )


def _signal_check(signals: Signals | None) -> Callable[[object], None] | None:
    """An event callback for :func:`~napari_moec.generators.drain` that looks at the run's
    signals about once a second (None without signals)."""
    if signals is None:
        return None
    last = time.monotonic()

    def check(_event) -> None:
        nonlocal last
        if time.monotonic() - last >= CHECK_EVERY:
            signals.check()
            last = time.monotonic()

    return check
