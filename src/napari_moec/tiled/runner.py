"""The client side of a tiled compression: scan, plan, then one Dask task per tile.

:class:`TiledCompressor` is the job as a generator of events (``run()``), the way
:class:`~napari_moec.training.Compressor` is for one volume: a front end drives it from a thread,
``stop()`` ends it keeping every finished tile (the next run with the same arguments resumes),
``pause()``/``resume()`` hold the workers between training steps. :func:`compress_tiled` drains
it with a terminal progress bar.

Order of work, so that bad input fails before anything is trained or written: check what needs
no voxel (path, 3D/4D, dtype, ratio, tile, destination), scan every tile on the cluster (NaN/Inf,
range, constant tiles, difficulty), allocate the byte budget, write the store's metadata, write
the constant tiles, then train the network tiles, largest share first, a bounded number in
flight (each holds its region in memory).
"""

from __future__ import annotations

import math
import threading
import time
import uuid
from collections import deque
from collections.abc import Generator
from dataclasses import replace
from pathlib import Path

import numpy as np

from .. import families
from ..config import ArchConfig, BoundConfig, QuantConfig, RunConfig, TrainConfig
from ..errors import ConfigError, MoecError
from ..generators import drain
from ..plan import check_ratio
from ..training import PSNR_CAP_RATIO
from .allocate import MODES
from .cluster import ClusterShape, connect, default_shape, total_threads
from .events import TiledEvent, TiledReport, TiledStarted, TileFinished, psnr_of
from .prepare import (
    StorePlan,
    check_regions,
    documents,
    make_plan,
    prepare_store,
    promise_summary,
    remove_store,
    scan,
)
from .sources import open_source
from .store import (
    ResultsLog,
    clear_state,
    pack_ozx,
    read_state,
    store_nbytes,
    write_metadata,
)
from .task import Signals, TileJob, TileResult, compress_tile, store_schedule
from .tiling import choose_margin, choose_tile

__all__ = ["TiledCompressor", "compress_tiled"]


class TiledCompressor:
    """Compress a volume of any size into a tiled OME-Zarr store (``.ome.zarr`` folder or
    ``.ozx`` file), one network of ``arch.model``'s family per tile, on a Dask cluster.

    Parameters
    ----------
    source
        A 3D/4D array-like (numpy, dask, zarr) or a path: ``.npy`` (memory-mapped), ``.tif``
        (read through tifffile's zarr view), a zarr / OME-Zarr folder or ``.ozx``.
    dest
        The store to write: a folder (``.ome.zarr``) or a zipped OME-Zarr file (``.ozx``).
    ratio
        ``original bytes / store bytes`` (every chunk and metadata byte) is at least this.
        With ``train.target_psnr`` it is the least ratio allowed (a ceiling on every tile's
        bytes; None: ``PSNR_CAP_RATIO``), and with a ``bound`` it is the networks' budget
        (each tile's correction stream comes on top: the ratio reached is reported).
    tile, margin
        Chunk shape ("auto", an edge in voxels, or one size per axis) and context voxels.
    allocation, exponent
        "difficulty" (bytes follow each tile's measured difficulty) or "equal"; the
        difficulty split's exponent (:mod:`.allocate`; None: the family's measured value).
    arch, train, quant, run, bound
        As for :class:`~napari_moec.training.Compressor`; widths are sized per tile, so
        ``arch.hidden_features`` must be None. ``train`` is each tile's schedule; its
        ``target_psnr`` (grid family) makes every tile the smallest that reaches that PSNR
        over the *store's* range (the store's MSE is the voxel-weighted mean of its tiles', so
        the store reaches it too). ``bound`` (max error, absolute or relative to the store's
        range, known after the scan) adds a verified correction stream to every network tile.
    client, scheduler, workers, memory_limit, niceness, pin
        A Dask ``Client`` to use, or a scheduler address, or the size of the LocalCluster
        started for the run (default: one worker per core), how far its workers lower
        their CPU priority (0 to 19; napari's widget uses 10, to keep the viewer responsive)
        and whether each is pinned to cores of its own (a machine running nothing else).
    overwrite
        Replace an existing store at ``dest`` (an unfinished run of the same job resumes
        without it).
    hook
        Called with each tile's job on its worker before training (fault injection, logging).
    """

    def __init__(
        self,
        source,
        dest,
        ratio: float | None = 256.0,
        *,
        tile="auto",
        margin="auto",
        allocation: str = "difficulty",
        exponent: float | None = None,
        arch: ArchConfig | None = None,
        train: TrainConfig | None = None,
        quant: QuantConfig | None = None,
        run: RunConfig | None = None,
        bound: BoundConfig | None = None,
        client=None,
        scheduler: str | None = None,
        workers: int | None = None,
        memory_limit="auto",
        niceness: int = 0,
        pin: bool = False,
        overwrite: bool = False,
        axes: str | None = None,
        spacing=None,
        unit: str | None = None,
        hook=None,
    ) -> None:
        self.source = open_source(source, axes=axes, spacing=spacing, unit=unit)
        self.train = store_schedule(train or TrainConfig())
        #: The PSNR every tile (so the store) reaches, or None: the ratio sets the size.
        self.target_psnr = self.train.target_psnr
        if ratio is None:
            ratio = 256.0 if self.target_psnr is None else PSNR_CAP_RATIO
        self.ratio = check_ratio(ratio)
        #: The bound asked for (resolved against the store's range after the scan).
        self.bound = bound or BoundConfig()
        self.arch = arch or ArchConfig()
        policy = families.get(self.arch.model).tile_policy
        self.tile = choose_tile(self.source.shape, self.source.dtype, self.ratio, tile,
                                policy=policy)  # fmt: skip
        self.margin = choose_margin(self.tile, margin, policy=policy)
        self.quant = quant or QuantConfig()
        check_regions(self)
        if allocation not in MODES:
            raise ConfigError(f"allocation must be one of {MODES}, got {allocation!r}")
        self.allocation = allocation
        if exponent is not None and not 0.0 <= exponent <= 4.0:
            raise ConfigError(f"exponent must be within [0, 4], got {exponent}")
        #: The difficulty split's exponent this run uses (given, or the family's).
        self.exponent = policy.difficulty_exponent if exponent is None else exponent
        if self.arch.hidden_features is not None:
            raise ConfigError("hidden_features is sized per tile; leave it unset")
        if self.target_psnr is not None and not hasattr(families.get(self.arch.model),
                                                          "fit_quality"):  # fmt: skip
            raise ConfigError(
                f"a target PSNR needs --model grid (model={self.arch.model!r} has no quality "
                "target)"
            )
        self.run_config = run or RunConfig()
        self.dest = Path(dest)
        self.zipped = self.dest.suffix.lower() == ".ozx"
        self.root = self.dest.with_name(self.dest.name + ".partial") if self.zipped else self.dest
        self.overwrite = overwrite
        self._check_dest()
        self._client, self._scheduler = client, scheduler
        if pin and (client is not None or scheduler is not None):
            raise ConfigError(
                "pin: only the workers of a local cluster started for the run can be pinned, "
                "not those of a given client or scheduler"
            )
        self.shape: ClusterShape = default_shape(self.run_config.device, workers, memory_limit,
                                                   niceness, pin)  # fmt: skip
        threads = self.run_config.threads
        if pin and threads is not None and threads > self.shape.torch_threads:
            # Threads pinned to fewer cores wait for each other at every barrier (placement.py).
            raise ConfigError(
                f"pin: {threads} threads a tile need {threads} cores a worker, and "
                f"{self.shape.workers} pinned workers here have {self.shape.torch_threads} "
                "each: ask for fewer threads or workers, or do not pin"
            )
        self.hook = hook
        self._stop = threading.Event()
        self._pause = threading.Event()
        #: Set while the run has taken a pause in (no new tile is sent; the workers hold).
        self._held = threading.Event()
        #: The tiles sent to the workers and not back yet (read from any thread; a tile leaves
        #: it only after its TileFinished event was taken from :meth:`run`).
        self.in_flight: frozenset[tuple[int, ...]] = frozenset()
        #: Results of every tile in the store so far (index -> TileResult).
        self.results: dict[tuple[int, ...], TileResult] = {}
        self._totals: list | None = None
        self._priority: frozenset = frozenset()

    # -- control from other threads ----------------------------------------------------------
    def stop(self) -> None:
        """End the run soon: tiles in the store stay, tiles in training are dropped."""
        self._stop.set()

    def pause(self) -> None:
        """Hold every worker between training steps and submit no new tile."""
        self._pause.set()

    def resume(self) -> None:
        self._pause.clear()

    def wait_held(self, timeout: float | None = None) -> bool:
        """Block until the run has taken a :meth:`pause` in: from then on no new tile is sent
        and only the tiles in :attr:`in_flight` may still finish. False on timeout."""
        return self._held.wait(timeout)

    def prioritize(self, indices) -> None:
        """Train the tiles ``indices`` next, when they are still waiting (thread-safe): a viewer
        asks for the tiles it shows, so the part the user looks at fills in first."""
        self._priority = frozenset(tuple(int(c) for c in i) for i in indices)

    # -- checks that read no voxel ---------------------------------------------------------
    def _check_dest(self) -> None:
        if not self.dest.parent.is_dir():
            raise ConfigError(f"output folder does not exist: {self.dest.parent}")
        if self.overwrite or not self.dest.exists():
            return
        if self.zipped:
            if not self.root.exists():
                raise ConfigError(f"{self.dest} exists; pass overwrite=True to replace it")
            return
        if self.dest.is_dir() and (not any(self.dest.iterdir()) or read_state(self.dest)):
            return  # empty, or an unfinished run (resumed when its plan matches)
        raise ConfigError(f"{self.dest} exists; pass overwrite=True to replace it")

    # -- the job ---------------------------------------------------------------------------
    def fit(self) -> TiledReport:
        """Run to the end, ignoring the events."""
        return drain(self.run())

    def run(self) -> Generator[TiledEvent, None, TiledReport]:
        """Scan, plan, compress. Yields :mod:`.events`; returns the :class:`TiledReport`."""
        start = time.monotonic()
        client, owned = connect(self._client, self._scheduler, self.shape)
        try:
            stats = yield from scan(self, client)
            plan = make_plan(self, stats)
            resumed = prepare_store(self, plan)
            todo = [t for t in plan.allocation.tiles if t.index not in self.results]
            # longest first (the schedule, then the bytes): fewer idle workers at the end
            todo.sort(key=lambda t: (-t.schedule, -t.payload_budget))
            workers = total_threads(client)
            yield TiledStarted(
                dest=str(self.dest), shape=self.source.shape, tile=self.tile, margin=self.margin,
                total_tiles=len(plan.allocation.tiles),
                network_tiles=plan.allocation.count("network"),
                constant_tiles=plan.allocation.count("constant"),
                empty_tiles=plan.allocation.count("empty"), resumed=resumed, todo=len(todo),
                budget_bytes=plan.budget, original_bytes=self.source.nbytes, ratio=self.ratio,
                workers=workers,
            )  # fmt: skip
            stopped = yield from self._compress(client, plan, todo, workers)
            return self._finish(plan, stopped, resumed, start, workers)
        finally:
            if owned:
                cluster = getattr(client, "cluster", None)
                client.close()
                if cluster is not None:
                    cluster.close()

    # -- 1. scan ---------------------------------------------------------------------------
    # -- 4. the tiles ------------------------------------------------------------------------
    def _compress(self, client, plan: StorePlan, todo, workers: int):
        from distributed import Event, wait

        # Names unique to this run: a task key seen before would give the scheduler's old
        # result (another store's tile, or a stopped run's) instead of running the tile.
        self._run_id = f"{uuid.uuid4().hex[:12]}"
        signals = Signals(f"moec-stop-{self._run_id}", f"moec-pause-{self._run_id}")
        stop_event, pause_event = Event(signals.stop, client), Event(signals.pause, client)
        run = replace(self.run_config, threads=self.run_config.threads or self.shape.torch_threads)
        log = ResultsLog(self.root)
        pending, running = deque(todo), {}
        window = 2 * workers
        total = len(plan.allocation.tiles)
        started, finished_here = time.monotonic(), 0
        paused, finished = False, False
        try:
            while pending or running:
                if self._stop.is_set():
                    # Tiles in training see the stop within a second and write nothing; those
                    # that finish first are kept. Wait for both, so nothing of this run is
                    # still writing when it returns (a resumed run starts from a settled store).
                    stop_event.set()
                    for future in wait(list(running)).done:
                        if future.status == "finished":
                            result = future.result()
                            self.results[result.index] = result
                            log.append(result)
                    finished = True
                    return True
                if self._pause.is_set() != paused:
                    paused = self._pause.is_set()
                    pause_event.set() if paused else pause_event.clear()
                while not paused and pending and len(running) < window:
                    t = _next_tile(pending, self._priority)
                    running[self._submit(client, plan, t, run, signals)] = t.index
                # Updated here only, after the events of the tiles that came back were taken:
                # a tile that leaves in_flight has had its TileFinished consumed.
                self.in_flight = frozenset(running.values())
                self._held.set() if paused else self._held.clear()
                if not running:
                    time.sleep(0.2)
                    continue
                try:
                    done, _ = wait(list(running), timeout=0.5, return_when="FIRST_COMPLETED")
                except TimeoutError:
                    continue
                for future in done:
                    index = running.pop(future)
                    result = _result(future, index)
                    self.results[index] = result
                    log.append(result)
                    finished_here += 1
                    yield self._event(result, total, started, finished_here, len(pending) +
                                      len(running))  # fmt: skip
            finished = True
            return False
        finally:
            self.in_flight = frozenset()
            self._held.clear()
            if not finished:  # stopped, failed or interrupted: tiles in training drop out
                stop_event.set()
                client.cancel(list(running))

    def _submit(self, client, plan: StorePlan, t, run: RunConfig, signals: Signals):
        source = self.source
        job = TileJob(plan.spec, t, str(self.root), self.train, run, source.ref, signals, self.hook)
        key = "moec-tile-" + "-".join(map(str, t.index)) + f"-{self._run_id}"
        if source.ref is not None:
            return client.submit(compress_tile, job, key=key, pure=False)
        slices = plan.spec.grid.region_slices(t.index)
        if source.dask is not None:
            region = client.compute(source.dask[slices])
        else:
            region = client.scatter(np.ascontiguousarray(np.asarray(source.local[slices])))
        return client.submit(compress_tile, job, region, key=key, pure=False)

    def _event(self, result: TileResult, total, started, finished_here, remaining) -> TileFinished:
        if self._totals is None:  # sums over the tiles in the store, kept up to date from here
            done = self.results.values()
            self._totals = [sum(r.sse for r in done), sum(r.voxels for r in done),
                            sum(r.nbytes for r in done)]  # fmt: skip
        else:
            self._totals[0] += result.sse
            self._totals[1] += result.voxels
            self._totals[2] += result.nbytes
        sse, voxels, nbytes = self._totals
        elapsed = time.monotonic() - started
        return TileFinished(
            index=result.index, kind=result.kind, nbytes=result.nbytes,
            psnr=psnr_of(result.sse, result.voxels), hidden=result.hidden,
            seconds=result.seconds, done=len(self.results), total=total, bytes_done=nbytes,
            running_psnr=psnr_of(sse, voxels), elapsed=elapsed,
            eta=elapsed / finished_here * remaining,
        )  # fmt: skip

    # -- 5. the end ----------------------------------------------------------------------------
    def _finish(self, plan: StorePlan, stopped: bool, resumed: int, start: float, workers: int):
        results = list(self.results.values())
        complete = not stopped and len(results) == len(plan.allocation.tiles)
        sse = sum(r.sse for r in results)
        voxels = sum(r.voxels for r in results)
        net = [r for r in results if r.kind == "network"]
        face_sse, face_vox = sum(r.face_sse for r in net), sum(r.face_voxels for r in net)
        net_sse, net_vox = sum(r.sse for r in net), sum(r.voxels for r in net)
        psnr = psnr_of(sse, voxels)
        seconds = time.monotonic() - start
        measured = [r.max_error for r in net if r.max_error is not None]
        max_measured = max(measured, default=0.0) if plan.spec.values.bounded else None
        if complete:
            summary = {"psnr": round(psnr, 2) if math.isfinite(psnr) else None,
                       "seconds": round(seconds, 1)}  # fmt: skip
            summary.update(promise_summary(self, max_measured))
            write_metadata(
                self.root,
                documents(
                    self,
                    plan.spec,
                    plan.allocation.fill_value,
                    {"ratio": self.ratio, "summary": summary},
                ),
            )
            ResultsLog(self.root).remove()
            clear_state(self.root)
        chunk_bytes, meta_bytes = store_nbytes(self.root)
        store_bytes = chunk_bytes + meta_bytes
        if complete and self.zipped:
            store_bytes = pack_ozx(self.root, self.dest)
            remove_store(self.root)
        promised = not plan.spec.values.bounded  # a correction comes on top of the budget
        if complete and promised and self.source.nbytes / store_bytes < self.ratio:
            raise MoecError(f"internal: the store takes {store_bytes} bytes, over its budget")
        # Tiles logged by an older run carry no wall time: the overhead is over those that do.
        timed = [r for r in net if r.wall_seconds > 0]
        wall = sum(r.wall_seconds for r in timed)
        trained = sum(r.seconds for r in timed)
        psnr_faces = psnr_of(face_sse, face_vox)
        psnr_interior = psnr_of(net_sse - face_sse, net_vox - face_vox)
        return TiledReport(
            dest=str(self.dest), shape=self.source.shape, dtype=self.source.dtype.name,
            tile=self.tile, margin=self.margin, target_ratio=self.ratio,
            original_bytes=self.source.nbytes, store_bytes=store_bytes, chunk_bytes=chunk_bytes,
            metadata_bytes=store_bytes - chunk_bytes, ratio=self.source.nbytes / store_bytes,
            total_tiles=len(plan.allocation.tiles),
            network_tiles=plan.allocation.count("network"),
            constant_tiles=plan.allocation.count("constant"),
            empty_tiles=plan.allocation.count("empty"), resumed=resumed, psnr=psnr,
            psnr_network=psnr_of(net_sse, net_vox), psnr_faces=psnr_faces,
            psnr_interior=psnr_interior, seam_penalty=psnr_interior - psnr_faces,
            seconds=seconds, tile_seconds=sum(r.seconds for r in net),
            peak_rss=max((r.peak_rss for r in net), default=0), workers=workers,
            stopped=not complete, allocation=self.allocation,
            max_error=plan.spec.values.max_error, max_error_measured=max_measured,
            correction_bytes=sum(r.correction_bytes for r in net), target_psnr=self.target_psnr,
            tile_wall_seconds=wall, overhead_share=1.0 - trained / wall if wall > 0 else 0.0,
            peak_anon=max((r.peak_anon for r in net), default=0),
            peak_file=max((r.peak_file for r in net), default=0),
            tile_anon=max((r.peak_anon - r.baseline_anon for r in net), default=0),
        )  # fmt: skip


def _next_tile(pending: deque, priority: frozenset):
    """The first waiting tile in ``priority``, else the next in order."""
    if priority:
        for t in pending:
            if t.index in priority:
                pending.remove(t)
                return t
    return pending.popleft()


def _result(future, index) -> TileResult:
    """A finished tile's result, or its failure as a MoecError naming the tile."""
    try:
        return future.result()
    except MoecError as exc:
        raise type(exc)(f"tile {index}: {exc}") from exc
    except Exception as exc:
        if type(exc).__name__ == "KilledWorker":
            raise MoecError(
                f"tile {index} killed its worker repeatedly (out of memory? use smaller tiles or "
                f"a larger memory_limit): {exc}"
            ) from exc
        raise MoecError(f"tile {index} failed: {type(exc).__name__}: {exc}") from exc


def compress_tiled(
    source, dest, ratio: float | None = 256.0, *, tile="auto", client=None,
    progress: bool = True, **options,
) -> TiledReport:  # fmt: skip
    """Compress ``source`` into the tiled store ``dest``; blocks until done (or Ctrl-C, which
    keeps the finished tiles: run again with the same arguments to resume).

    Takes the arguments of :class:`TiledCompressor`; ``progress`` shows a terminal bar (tqdm).

    Examples
    --------
    >>> import napari_moec
    >>> report = napari_moec.compress_tiled("scan.tif", "scan.ome.zarr", 256)  # doctest: +SKIP
    >>> report.ratio, report.psnr                                               # doctest: +SKIP
    >>> napari_moec.compress_tiled("scan.tif", "bounded.ome.zarr", 64,
    ...     bound=napari_moec.config.BoundConfig(max_error_rel=0.01))           # doctest: +SKIP
    >>> napari_moec.compress_tiled("scan.tif", "q.ome.zarr", None,
    ...     train=napari_moec.TrainConfig(target_psnr=40))                      # doctest: +SKIP
    """
    from .progress import TerminalProgress

    job = TiledCompressor(source, dest, ratio, tile=tile, client=client, **options)
    bar = TerminalProgress(enabled=progress)
    try:
        return drain(job.run(), bar.update)  # an interrupt in bar.update closes the run first
    except KeyboardInterrupt:
        bar.note(
            "interrupted: finished tiles are kept; run again with the same arguments to resume"
        )
        raise
    finally:
        bar.close()
