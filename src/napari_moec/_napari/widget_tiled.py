"""The tiled run of the dock widget: big or lazy layers compressed tile by tile on Dask.

A layer goes this way when it is lazy (dask, zarr, multiscale: never read whole, here or anywhere
on the GUI thread), has more than ``TILED_ABOVE_VOXELS`` voxels, or the mode says "tiled"
(:attr:`~.widget_request.RunRequest.tiled_mode`). :class:`TiledRun` builds a
:class:`~napari_moec.tiled.runner.TiledCompressor` (it reads no voxel) writing a scratch ``.ozx``
(a folder while it runs), makes the live layers over that store (``tiled_live``) and drives the
job in a napari worker (``tiled_run``). Pause and Stop act on the job, which reaches the Dask
workers; a stopped run leaves a resumable folder (:class:`TiledStores` remembers it), and Start
with the same layer and settings resumes it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

from napari.qt.threading import create_worker

from ..errors import ConfigError
from .lazy_blocks import LiveStoreBlocks
from .store_files import scratch_folder
from .tiled_live import TiledLiveLayers
from .tiled_run import LazyResult, ViewPrefetch, compress_tiles
from .widget_panel import RunPanel
from .widget_request import RunRequest
from .widget_results import ResultsController
from .widget_run import freeze_gc, thaw_gc

#: How far the workers of a LocalCluster started from the widget lower their CPU priority: as
#: fast as ever on an idle machine, and on a busy one napari keeps the CPU its event loop needs
#: (a scheduler address in Advanced is the user's cluster: its workers are left as they are).
WORKER_NICENESS = 10

__all__ = ["TiledRun", "TiledStores", "tiled_estimate"]


def engine_kwargs(request: RunRequest) -> dict:
    """TiledCompressor keywords for ``request`` (no source, no destination); raises
    ConfigError for what the tiled engine cannot do."""
    if request.arch.hidden_features is not None:
        raise ConfigError("the network width is sized per tile in tiled mode; leave it auto")
    configs = dict(request.configs)  # a bound travels as ``bound``: every tile keeps it
    return {"ratio": request.ratio, **configs, "niceness": WORKER_NICENESS,
            **request.tiled.engine_kwargs}  # fmt: skip


def tiled_estimate(request: RunRequest) -> str:
    """The tiled plan from the layer's shape and dtype only: tiles, store budget, where."""
    from ..families import get as family
    from ..plan import budget_nbytes, check_ratio
    from ..tiled.cluster import default_shape
    from ..tiled.tiling import choose_margin, choose_tile

    shape, dtype = request.shape, request.dtype
    kwargs = engine_kwargs(request)
    ratio = check_ratio(kwargs["ratio"])
    policy = family(kwargs["arch"].model).tile_policy
    tile = choose_tile(shape, dtype, ratio, kwargs["tile"], policy=policy)
    margin = choose_margin(tile, "auto", policy=policy)
    tiles = math.prod(math.ceil(n / t) for n, t in zip(shape, tile, strict=True))
    budget = budget_nbytes(math.prod(shape) * dtype.itemsize, ratio)
    workers = default_shape(request.run.device, kwargs["workers"]).workers
    where = kwargs["scheduler"] or f"local Dask cluster, {workers} workers"
    return (f"tiled: {tiles:,} tiles of {'×'.join(map(str, tile))} (margin {max(margin)}) · "
            f"store ≤ {budget:,} B, ~{budget // tiles:,} B per tile · "
            f"{kwargs['arch'].model} tiles · "
            f"{where}")  # fmt: skip


class TiledStores:
    """The stores of the widget's tiled runs, across runs: where a new run writes, and the
    stopped ones that Start resumes (by layer and settings). Owned by the widget."""

    def __init__(self) -> None:
        self._resumable: dict[tuple, str] = {}

    @staticmethod
    def key(request: RunRequest, kwargs: dict) -> tuple:
        return (id(request.data), request.name, repr(sorted(kwargs.items())))

    def dest(self, key: tuple, name: str) -> str:
        """A stopped run's ``.ozx`` (its ``.partial`` folder is kept) for ``key``, else a new
        scratch ``.ozx``: the run budgets its ZIP records, so Save keeps the ratio either way."""
        dest = self._resumable.get(key)
        if dest is not None and Path(dest + ".partial").is_dir():
            return dest
        scratch = scratch_folder()
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in name) or "volume"
        return str(scratch / f"{safe}-{len(list(scratch.iterdir()))}.ozx")

    def ended(self, key: tuple, dest: str, stopped: bool) -> None:
        if stopped:
            self._resumable[key] = dest
        else:
            self._resumable.pop(key, None)


class TiledRun:
    """Compress the request's layer tile by tile on Dask, its live layers filling in.

    Owns the :class:`~napari_moec.tiled.runner.TiledCompressor` (``job``), the worker, the
    live layers, the pause state and the tiles done; writes progress into ``panel`` and hands
    the result to ``results``. Reads no voxel on the GUI thread.

    Raises
    ------
    ConfigError
        The tiled engine rejects the request.
    """

    def __init__(
        self,
        request: RunRequest,
        panel: RunPanel,
        results: ResultsController,
        stores: TiledStores,
        *,
        on_finished: Callable[[], None],
    ) -> None:
        from ..tiled.prepare import store_experts
        from ..tiled.runner import TiledCompressor
        from ..tiled.tiledecode import label_dtype

        kwargs = engine_kwargs(request)
        self._key = TiledStores.key(request, kwargs)
        dest = stores.dest(self._key, request.name)
        self.job = job = TiledCompressor(request.data, dest, **kwargs, **request.physical)
        self.request, self.panel, self.results, self.stores = request, panel, results, stores
        self.on_finished = on_finished
        experts = store_experts(job.arch)  # tiles' most experts (the label stride)
        tiles = math.prod(math.ceil(n / t) for n, t in zip(job.source.shape, job.tile, strict=True))
        self.blocks = LiveStoreBlocks(job.root, job.source.shape, job.tile, job.source.dtype,
                                      label_dtype(tiles, experts))  # fmt: skip
        self.worker = None
        self.live: TiledLiveLayers | None = None
        self.paused = False
        self.tiles_done = (0, 0)
        self._closing = False

    def start(self) -> None:
        job, panel, source = self.job, self.panel, self.request.layer
        prefetch = ViewPrefetch()
        self.live = TiledLiveLayers(panel.viewer, source, self.blocks, prefetch, job)
        worker = create_worker(compress_tiles, job, prefetch, self.blocks, source.name,
                               _start_thread=False, _ignore_errors=True)  # fmt: skip
        worker.yielded.connect(self._on_event)
        worker.returned.connect(self._on_returned)
        worker.errored.connect(panel.worker_failed)
        worker.finished.connect(self._on_finished)
        worker.finished.connect(thaw_gc)
        self.worker = worker
        panel.progress.setRange(0, 0)  # busy: the cluster starts, then the scan
        panel.status.setText("Starting the Dask cluster and scanning the tiles…")
        for key in ("step", "loss", "psnr", "load"):  # the tiled run reports tiles and PSNR
            panel.readouts[key].setText("–")
        panel.set_running(True)
        freeze_gc()
        worker.start()

    def toggle_pause(self) -> None:
        self.paused = not self.paused
        panel = self.panel
        if self.paused:
            self.job.pause()  # workers hold between training steps; no new tile is sent
            panel.pause_button.setText("Resume")
            panel.status.setText("Paused: the Dask workers hold between training steps.")
        else:
            self.job.resume()
            panel.pause_button.setText("Pause")
            panel.status.setText("Compressing…")

    def stop(self) -> None:
        """Finished tiles stay in the store, which Start resumes."""
        self.job.stop()  # reaches the Dask workers, paused ones too
        self.panel.stopping("Stopping: keeping the finished tiles…")

    def shutdown(self) -> None:
        self._closing = True
        self.job.stop()
        self.worker.quit()

    # -- worker signals ----------------------------------------------------------------------
    def _on_event(self, event) -> None:
        from ..tiled.events import ScanProgress, TiledStarted, TileFinished

        if self._closing:
            return
        progress, readouts = self.panel.progress, self.panel.readouts
        if isinstance(event, TileFinished):
            progress.setValue(event.done)
            eta = f"  ·  ETA {event.eta:.0f} s" if math.isfinite(event.eta) else ""
            progress.setFormat(f"%v / %m tiles{eta}")
            readouts["step"].setText(f"{event.done} / {event.total} tiles")
            self.tiles_done = (event.done, event.total)
            if math.isfinite(event.running_psnr):
                readouts["psnr"].setText(f"{event.running_psnr:.2f} dB (finished tiles)")
            self.live.tile_finished()
        elif isinstance(event, ScanProgress):
            progress.setRange(0, event.total)
            progress.setValue(event.done)
            progress.setFormat("scanning %v / %m tiles")
        elif isinstance(event, TiledStarted):
            progress.setRange(0, event.total_tiles)
            progress.setValue(event.total_tiles - event.todo)
            progress.setFormat("%v / %m tiles")
            self.tiles_done = (event.total_tiles - event.todo, event.total_tiles)
            kept = f", {event.resumed} kept from the stopped run" if event.resumed else ""
            self.panel.status.setText(
                f"Compressing {event.todo:,} of {event.total_tiles:,} tiles on {event.workers} "
                f"Dask worker threads{kept}; store ≤ {event.budget_bytes:,} B."
            )
            self.live.refresh()

    def _on_returned(self, result: LazyResult) -> None:
        if self._closing:
            return
        self.stores.ended(self._key, str(self.job.dest), result.stopped)
        self.results.take_lazy(result, self.tiles_done)

    def _on_finished(self) -> None:
        if self.live is not None:
            self.live.finish()
        self.panel.progress.setFormat("%p%")
        self.on_finished()
