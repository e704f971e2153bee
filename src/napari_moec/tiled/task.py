"""One tile, compressed where a Dask worker runs it: read the tile and its margin, train its
network of the store's model family (the core's :func:`~napari_moec.training.train`: no ratio
and no plan, the allocator sized it), store it at the best quality that fits its byte share
(the family's rate control, judged on the training's fixed voxel sample), estimate its error
from that sample (the tile is not decoded whole: issue 24), write its chunk atomically. Under a
quality promise (:mod:`.tilebound`: a store with a bound, or a target PSNR) the payload is the
smallest that reaches the tile's PSNR target, a verified correction stream rides with it, and
the chunk is decoded from its own bytes before it is written: its errors are then exact.

Nothing here talks to the scheduler except :class:`Signals`, which lets the client's stop and
pause reach a tile that is training: the task looks at two Dask ``Event``s about once a second.
A stopped tile writes nothing (the next run redoes it); a tile whose worker dies is rerun by the
scheduler, and since a chunk appears only by an atomic rename, no half tile is ever left.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
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
from ..sampling import Normalization, lattice_sample, region_coords
from ..schedule import EVAL_POINTS
from ..training import train
from .allocate import TilePlan
from .memory import MemoryWatch, release_heap, worker_peak
from .results import TileResult, face_mask, tile_errors
from .sources import SourceRef
from .store import chunk_path, write_atomic
from .tilebound import correct_tile, tile_prediction, tile_psnr, verify_chunk
from .tileformat import TileSpec, encode_network_tile

__all__ = [
    "Signals",
    "TileJob",
    "TileResult",
    "TileStopped",
    "compress_tile",
    "store_schedule",
    "tile_errors",
    "tile_schedule",
]

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


#: A store's steps where the user leaves them to "auto" (``TrainConfig.steps`` None): each
#: network tile trains this many times its share (:func:`tile_schedule`). Not the family's
#: ``auto_steps`` for one file: a store's training is the job's steps times its network
#: tiles, so its length is chosen for the volume's size (``--steps``, ``--time-limit``); 2000
#: is what every measured store of docs/tiled.md that does not name its steps trained.
STORE_AUTO_STEPS = 2000


def store_schedule(config: TrainConfig) -> TrainConfig:
    """``config`` with "auto" steps resolved for a store (:data:`STORE_AUTO_STEPS`)."""
    if config.steps is not None:
        return config
    return replace(config, steps=STORE_AUTO_STEPS)


def tile_schedule(config: TrainConfig, share: float) -> TrainConfig:
    """``config`` with its steps and time limit times ``share`` (``TilePlan.schedule``: a
    tile trains in proportion to its voxels), at least one step."""
    if share == 1.0:
        return config
    limit = config.time_limit
    return replace(
        config,
        steps=max(1, round(config.steps * share)),
        time_limit=None if limit is None else limit * share,
    )


def compress_tile(job: TileJob, region: np.ndarray | None = None) -> TileResult:
    """Train, store and measure one network tile; ``region`` is its voxels plus margin when the
    client sent them, else they are read from ``job.source``.

    The reported errors are *estimates* (issue 24: decoding the whole tile only to report it
    would cost a reader's decode): the stored payload's network is evaluated on a fixed sample,
    the one the rate control judged payloads on: for a family judged by region decodes
    (``judged_on_volume``, grid) a regular sub-grid of at most ``EVAL_POINTS`` voxels of the
    tile itself (:func:`~napari_moec.sampling.lattice_sample`), else the training's random
    sample of the region
    (:func:`~napari_moec.training.eval_set`, drawn with replacement). ``sse`` is the mean
    squared error (over the volume's range) of the sampled voxels that lie in the tile times
    its voxel count, ``face_sse`` the same over the sampled voxels on its faces
    (:func:`sample_errors`)."""
    spec, plan = job.spec, job.plan
    started = time.perf_counter()
    release_heap()  # what earlier tiles freed goes back to the system: the baseline is real
    memory = MemoryWatch()
    memory.sample()
    if job.hook is not None:
        job.hook(job)
    if job.signals is not None:
        job.signals.check()
    owned = region is None  # read here: nobody else sees the array
    if region is None:
        region = job.source.read(spec.grid.region_slices(plan.index))
    memory.sample()
    model_config = plan.config
    family = families.get(spec.networks.family)
    device = resolve_device(job.run.device)
    threads = check_threads(job.run.threads)
    backend = resolve_backend(job.run.backend, device, threads)
    if not family.tutel_routing:
        backend = "native"  # the family routes itself (ModelFamily.tutel_routing)
    seed = job.train.seed
    # All tiles share the volume's normalisation, stated once in the store's metadata.
    normalization = Normalization(spec.values.vmin, spec.values.vmax, *spec.values.norm)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        model = family.build(model_config, generator=torch.Generator().manual_seed(seed))
        model = model.to(device)
        use_backend(model, backend)
        shape = region.shape
        inner = spec.grid.tile_in_region(plan.index)  # the voxels a reader decodes
        inner_box = spec.grid.tile_box_in_region(plan.index)
        target_psnr = job.train.target_psnr
        # Only a quality promise reads the raw voxels again (the correction stream and the
        # exact check of the chunk): otherwise the tile holds one copy of its region, the
        # normalised one, made in place where the region is a float32 array of its own
        # (issue 24: a worker holds its tile plus margin).
        promised = spec.values.bounded or target_psnr is not None
        original = region[inner] if promised else None
        in_place = (
            owned
            and not promised
            and region.dtype == np.float32
            and region.flags.owndata
            and region.flags.writeable
        )
        normalised = normalization.apply(region, out=region if in_place else None)
        del region
        values = torch.from_numpy(normalised.reshape(-1)).to(device)
        training = train(
            TrainingTarget(values, shape, spec.values.norm, decoded=inner_box),
            model,
            tile_schedule(job.train, plan.schedule),
            device=device,
            generator=torch.Generator(device=device).manual_seed(seed),
            family=family,
            config=model_config,
            quant=spec.networks.quant,
            budget=plan.payload_budget,
        )
        trained = drain(training, _signal_check(job.signals, memory))
        memory.sample()
        if family.judged_on_volume:
            # A regular sub-grid of the region, decoded by the family's separable region
            # decoder: the grid family's per-point decode of the random eval sample gathered
            # 64 nodes a level a point and was ~40 % of a 400-step tile's time (py-spy).
            # (of the tile's own voxels: the margin is not decoded; TrainingTarget.decoded)
            roi, stride = lattice_sample(shape, EVAL_POINTS, inner_box)
            lattice = [(a, n, st) for (a, n), st in zip(roi, stride, strict=True)]
            cut = tuple(slice(*axis) for axis in lattice)
            targets = torch.from_numpy(normalised[cut].reshape(-1))
            coords = region_coords(shape, lattice)

            def sample_values(stored: torch.nn.Module) -> torch.Tensor:
                values, _ = family.decode_region(stored, shape, roi, stride,
                                                 device=device, labels=False)  # fmt: skip
                return torch.from_numpy(values.reshape(-1))
        else:
            coords, targets = trained.eval_set

            def sample_values(stored: torch.nn.Module) -> torch.Tensor:
                with torch.no_grad():
                    value, _ = stored.decode(coords)
                return value[:, 0].float()

        quant = spec.networks.quant

        def stored_model(payload: bytes) -> torch.nn.Module:
            weights = family.codec.unpack_payload(model_config, quant, payload)
            stored = family.model_from_weights(model_config, weights).to(device)
            use_backend(stored, backend)
            return stored

        lo, hi = spec.values.norm

        def sample_errors_of(payload: bytes) -> torch.Tensor:
            """Squared errors (normalised units) of the network ``payload`` holds on the
            sample, its values clipped to the volume's range as every reader clips them
            (unclipped, a 100-step macaque tile's estimate was 1.3 dB under its decode: most
            of it is background at the range's floor)."""
            values = sample_values(stored_model(payload)).clamp(lo, hi)
            return (values - targets) ** 2

        def payload_error(payload: bytes) -> float:
            """MSE (normalised units) of the network ``payload`` holds on the sample."""
            return float(sample_errors_of(payload).mean())

        if target_psnr is not None:  # the smallest payload whose tile reaches the target
            judge = tile_psnr(spec, original)

            def payload_psnr(payload: bytes) -> float:
                stored = stored_model(payload)
                return judge(tile_prediction(family, stored, spec, plan.index, device))

            payload, multiplier, _ = family.fit_quality(
                trained.model, plan.payload_budget, payload_psnr, target_psnr
            )
        else:
            payload, multiplier, _ = family.fit_payload(
                trained.model,
                model_config,
                quant,
                plan.payload_budget,
                distortion=payload_error if family.judged_tile_fit else None,
            )
        raw = None
        if spec.values.bounded:
            stored = stored_model(payload)
            values = tile_prediction(family, stored, spec, plan.index, device)
            raw = correct_tile(spec, plan.index, original, values, stored, device)
        err = sample_errors_of(payload).cpu().numpy().astype(np.float64)
        data = encode_network_tile(spec, plan.index, model_config, payload, raw)
        measured = None
        if promised:
            # The chunk as written, decoded as every reader does: the bound is checked on each
            # voxel (BoundViolation: nothing is written) and the errors reported are exact.
            decoded = verify_chunk(spec, plan.index, data, original)
            exact = tile_errors(spec, plan.index, original, decoded)
            measured = float(np.abs(decoded.astype(np.float64) - original).max())
    finally:
        torch.set_num_threads(previous_threads)
    if measured is None:
        sse, face_sse, face_voxels = sample_errors(spec, plan.index, coords.cpu().numpy(), err)
    else:
        sse, face_sse, face_voxels = exact
    voxels = spec.grid.tile_voxels(plan.index)
    memory.sample()
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
        voxels=voxels,
        sse=sse,
        face_voxels=face_voxels,
        face_sse=face_sse,
        peak_rss=worker_peak(),
        max_error=measured if spec.values.bounded else None,
        correction_bytes=len(raw or b""),
        wall_seconds=time.perf_counter() - started,
        baseline_anon=memory.baseline_anon,
        peak_anon=memory.peak_anon,
        peak_file=memory.peak_file,
        peak_resident=memory.peak_resident,
        baseline_resident=memory.baseline_resident,
        payload_budget=plan.payload_budget,
    )


def sample_errors(spec: TileSpec, index, coords: np.ndarray, err: np.ndarray):
    """(sse, face_sse, face_voxels) of tile ``index`` estimated from squared errors ``err``
    (normalised units) at region coordinates ``coords`` (the eval sample), scaled to the
    tile's voxels and faces as :func:`~.results.tile_errors` would measure them exactly. A part
    the sample misses (a tiny tile) takes the whole sample's mean."""
    region = spec.region_shape(index)
    inner = spec.grid.tile_in_region(index)
    voxel = np.stack(
        [np.rint((coords[:, a] + 1) / 2 * (n - 1)) if n > 1 else np.zeros(len(coords))
         for a, n in enumerate(region)], axis=1,
    ).astype(np.int64)  # fmt: skip
    inside = np.ones(len(coords), dtype=bool)
    face = np.zeros(len(coords), dtype=bool)
    for a, (s, t) in enumerate(zip(inner, spec.grid.tile_slices(index), strict=True)):
        inside &= (voxel[:, a] >= s.start) & (voxel[:, a] < s.stop)
        if t.start > 0:
            face |= voxel[:, a] == s.start
        if t.stop < spec.grid.shape[a]:
            face |= voxel[:, a] == s.stop - 1
    face &= inside
    lo, hi = spec.values.norm
    scale = 1.0 / (hi - lo) ** 2  # normalised units -> over the volume's range
    overall = float(err.mean()) if err.size else 0.0

    def mean(mask: np.ndarray) -> float:
        return float(err[mask].mean()) if mask.any() else overall

    face_voxels = _face_voxels(spec, index)
    return (
        mean(inside) * scale * spec.grid.tile_voxels(index),
        mean(face) * scale * face_voxels,
        face_voxels,
    )


def _face_voxels(spec: TileSpec, index) -> int:
    """Voxels of the tile's faces (:func:`~napari_moec.tiled.results.face_mask`)."""
    return int(face_mask(spec, index).sum())


def _signal_check(signals: Signals | None, memory: MemoryWatch) -> Callable[[object], None]:
    """An event callback for :func:`~napari_moec.generators.drain` that, about once a second,
    looks at the run's signals (when there are any) and samples the worker's memory."""
    last = time.monotonic()

    def check(_event) -> None:
        nonlocal last
        if time.monotonic() - last >= CHECK_EVERY:
            memory.sample()
            if signals is not None:
                signals.check()
            last = time.monotonic()

    return check
