"""The tiled run of the dock widget: big or lazy layers compressed tile by tile on Dask.

A mixin of :class:`~napari_moec._widget.MoecWidget`. A layer goes this way when it is lazy
(dask, zarr, multiscale: never read whole, here or anywhere on the GUI thread), has more than
``TILED_ABOVE_VOXELS`` voxels, or the mode says "tiled". Start builds a
:class:`~napari_moec.tiled.runner.TiledCompressor` (it reads no voxel) writing a scratch
``.ozx`` (a folder while it runs), makes the live layers over that store (``_tiled_live``) and
drives the job in a napari worker (``_tiled_run``). Pause and Stop act on the job, which reaches
the Dask workers; a stopped run leaves a resumable folder, and Start with the same layer and
settings resumes it. Save copies the ``.ozx`` or unpacks it into an ``.ome.zarr`` folder.
"""

from __future__ import annotations

import atexit
import math
import shutil
import tempfile
import zipfile
from pathlib import Path

import numpy as np
from napari.qt.threading import create_worker

from ._lazy_blocks import LiveStoreBlocks
from ._tiled_live import TiledLiveLayers
from ._tiled_run import LazyResult, ViewPrefetch, compress_tiles
from ._widget_lifecycle import is_lazy, volume_data
from ._widget_run import freeze_gc, thaw_gc
from ._widget_tiled_settings import TILED_ABOVE_VOXELS
from .errors import ConfigError

#: How far the workers of a LocalCluster started from the widget lower their CPU priority: as
#: fast as ever on an idle machine, and on a busy one napari keeps the CPU its event loop needs
#: (a scheduler address in Advanced is the user's cluster: its workers are left as they are).
WORKER_NICENESS = 10

__all__ = ["TiledMixin", "save_store", "wants_tiled"]


def wants_tiled(layer, mode: str) -> bool:
    """Whether ``layer`` is compressed tile by tile (from its metadata only)."""
    data = volume_data(layer)
    return mode == "tiled" or is_lazy(layer) or math.prod(data.shape) > TILED_ABOVE_VOXELS


def save_store(store: str, path: str | Path) -> Path:
    """Write the store ``store`` (a ``.ozx`` file, or the folder of a stopped run) to ``path``:
    one ``.ozx`` file, or a folder (``.ome.zarr`` appended when the name has no zarr suffix).
    Atomic: made beside the target and renamed into place; an existing target is refused.

    A finished run's store is an ``.ozx`` budgeted with its ZIP records, so both forms keep
    the target ratio (the folder is the smaller). A stopped run's folder keeps its run state
    (``moec compress`` with the same source and settings resumes it).
    """
    from .tiled.store import pack_ozx

    source, path = Path(store), Path(path)
    if path.suffix.lower() not in (".ozx", ".zarr"):
        path = path.with_name(path.name + ".ome.zarr")
    if path.exists():
        raise ConfigError(f"{path} exists; choose another name")
    partial = path.with_name(f".{path.name}.partial")
    if partial.is_dir():
        shutil.rmtree(partial)
    else:
        partial.unlink(missing_ok=True)
    if path.suffix.lower() == ".ozx":
        if source.is_dir():
            pack_ozx(source, path)  # writes atomically itself
            return path
        shutil.copyfile(source, partial)
    elif source.is_dir():
        shutil.copytree(source, partial)
    else:
        with zipfile.ZipFile(source) as zf:
            zf.extractall(partial)
    partial.rename(path)
    return path


_scratch: Path | None = None


def scratch_folder() -> Path:
    """Where this process's tiled runs write their stores until saved: one temporary folder,
    removed when the process exits (the result layers read from it until then)."""
    global _scratch
    if _scratch is None:
        _scratch = Path(tempfile.mkdtemp(prefix="napari-moec-"))
        atexit.register(shutil.rmtree, _scratch, ignore_errors=True)
    return _scratch


class TiledMixin:
    """Start, follow, stop/resume and save a tiled compression."""

    def _tiled_kwargs(self, layer, settings) -> dict:
        """TiledCompressor keywords for ``layer`` and the settings; raises ConfigError."""
        tiled = self.settings.tiled.compressor_kwargs()
        if settings["arch"].hidden_features is not None:
            raise ConfigError("the network width is sized per tile in tiled mode; leave it auto")
        return {"ratio": settings["ratio"], "arch": settings["arch"], "train": settings["train"],
                "quant": settings["quant"], "run": settings["run"], "niceness": WORKER_NICENESS,
                **tiled}  # fmt: skip

    def tiled_estimate(self, layer, physical, settings) -> str:
        """The tiled plan from the layer's shape and dtype only: tiles, store budget, where."""
        from .plan import check_ratio
        from .tiled.cluster import default_shape
        from .tiled.tiling import choose_margin, choose_tile

        data = volume_data(layer)
        shape, dtype = tuple(data.shape), np.dtype(data.dtype)
        kwargs = self._tiled_kwargs(layer, settings)
        ratio = check_ratio(kwargs["ratio"])
        tile = choose_tile(shape, dtype, ratio, kwargs["tile"])
        margin = choose_margin(tile, "auto")
        tiles = math.prod(math.ceil(n / t) for n, t in zip(shape, tile, strict=True))
        budget = int(math.prod(shape) * dtype.itemsize // ratio)
        workers = default_shape(settings["run"].device, kwargs["workers"]).workers
        where = kwargs["scheduler"] or f"local Dask cluster, {workers} workers"
        return (f"tiled: {tiles:,} tiles of {'×'.join(map(str, tile))} (margin {max(margin)}) · "
                f"store ≤ {budget:,} B, ~{budget // tiles:,} B per tile · {where}")  # fmt: skip

    def _resume_key(self, layer, kwargs) -> tuple:
        return (id(volume_data(layer)), layer.name, repr(sorted(kwargs.items())))

    def _make_tiled(self):
        """A TiledCompressor for the Source layer (a stopped run of the same layer and settings
        is resumed); raises ConfigError. Reads no voxel."""
        from .tiled.runner import TiledCompressor

        layer, physical, settings = self._source_and_settings()
        kwargs = self._tiled_kwargs(layer, settings)
        key = self._resume_key(layer, kwargs)
        dest = self._resumable.get(key)  # a stopped run's .ozx, whose folder is kept
        if dest is None or not Path(dest + ".partial").is_dir():
            scratch = scratch_folder()
            safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in layer.name) or "volume"
            count = len(list(scratch.iterdir()))
            # An .ozx: the run budgets its ZIP records, so Save keeps the ratio either way.
            dest = str(scratch / f"{safe}-{count}.ozx")
        job = TiledCompressor(volume_data(layer), dest, **kwargs, **physical)
        self._tiled_key, self._tiled_dest = key, job.dest
        return job

    def _start_tiled(self) -> None:
        job = self._make_tiled()
        source = self.source_layer()
        experts = job.arch.num_experts or 2
        tiles = math.prod(math.ceil(n / t) for n, t in zip(job.source.shape, job.tile, strict=True))
        label_dtype = np.uint32 if tiles * experts < 2**32 - 1 else np.uint64
        blocks = LiveStoreBlocks(job.root, job.source.shape, job.tile, job.source.dtype,
                                 label_dtype)  # fmt: skip
        prefetch = ViewPrefetch()
        self._compressor = job
        self._closing = False
        self._paused = False
        self._tiled_live = TiledLiveLayers(self.viewer, source, blocks, prefetch, job)
        self._watch_window()
        worker = create_worker(compress_tiles, job, prefetch, blocks, source.name,
                               _start_thread=False, _ignore_errors=True)  # fmt: skip
        worker.yielded.connect(self._on_tiled_event)
        worker.returned.connect(self._on_tiled_returned)
        worker.errored.connect(self._on_error)
        worker.finished.connect(self._on_tiled_finished)
        worker.finished.connect(thaw_gc)
        self.worker = worker
        self.progress.setRange(0, 0)  # busy: the cluster starts, then the scan
        self.status.setText("Starting the Dask cluster and scanning the tiles…")
        for key in ("step", "loss", "psnr", "load"):  # the tiled run reports tiles and PSNR
            self.readouts[key].setText("–")
        self._set_running(True)
        freeze_gc()
        worker.start()

    def _on_tiled_event(self, event) -> None:
        from .tiled.events import ScanProgress, TiledStarted, TileFinished

        if self._closing:
            return
        if isinstance(event, TileFinished):
            self.progress.setValue(event.done)
            eta = f"  ·  ETA {event.eta:.0f} s" if math.isfinite(event.eta) else ""
            self.progress.setFormat(f"%v / %m tiles{eta}")
            self.readouts["step"].setText(f"{event.done} / {event.total} tiles")
            self._tiles_done = (event.done, event.total)
            if math.isfinite(event.running_psnr):
                self.readouts["psnr"].setText(f"{event.running_psnr:.2f} dB (finished tiles)")
            self._tiled_live.tile_finished()
        elif isinstance(event, ScanProgress):
            self.progress.setRange(0, event.total)
            self.progress.setValue(event.done)
            self.progress.setFormat("scanning %v / %m tiles")
        elif isinstance(event, TiledStarted):
            self.progress.setRange(0, event.total_tiles)
            self.progress.setValue(event.total_tiles - event.todo)
            self.progress.setFormat("%v / %m tiles")
            self._tiles_done = (event.total_tiles - event.todo, event.total_tiles)
            kept = f", {event.resumed} kept from the stopped run" if event.resumed else ""
            self.status.setText(
                f"Compressing {event.todo:,} of {event.total_tiles:,} tiles on {event.workers} "
                f"Dask worker threads{kept}; store ≤ {event.budget_bytes:,} B."
            )
            self._tiled_live.refresh()

    def _on_tiled_returned(self, result: LazyResult) -> None:
        if self._closing:
            return
        self.result = result
        if result.stopped:
            self._resumable[self._tiled_key] = str(self._tiled_dest)
        else:
            self._resumable.pop(self._tiled_key, None)
        self._show_lazy_result(result)

    def _on_tiled_finished(self) -> None:
        self.worker = None
        self._compressor = None
        if self._tiled_live is not None:
            self._tiled_live.finish()
        self.progress.setRange(0, 1)
        self.progress.setValue(1 if self.result is not None else 0)
        self.progress.setFormat("%p%")
        self._set_running(False)

    def _toggle_tiled_pause(self) -> None:
        job = self._compressor
        self._paused = not self._paused
        if self._paused:
            job.pause()  # workers hold between training steps; no new tile is sent
            self.pause_button.setText("Resume")
            self.status.setText("Paused: the Dask workers hold between training steps.")
        else:
            job.resume()
            self.pause_button.setText("Pause")
            self.status.setText("Compressing…")

    def _show_lazy_result(self, result: LazyResult) -> None:
        """Readouts and status of a tiled run, an opened store or a big ``.moec``."""
        report = result.report
        if report is not None:
            text = (f"{report.store_bytes:,} B, {report.ratio:.0f}x, "
                    f"PSNR {report.psnr:.2f} dB")  # fmt: skip
            if report.stopped:
                done, total = self._tiles_done
                text += f" over the {done} of {total} tiles finished"
        elif result.compressed is not None:
            c = result.compressed
            psnr = f"PSNR {c.psnr:.2f} dB" if c.psnr is not None else "PSNR unknown"
            text = f"{c.nbytes:,} B, {c.ratio:.0f}x, {psnr}"
        else:
            text = f"tiled store {result.store}"
        self._result_name = result.name
        self.readouts["result"].setText(text)
        if report is not None and report.stopped:
            self.status.setText(
                f"Stopped: {text}. Finished tiles are kept; Start (same layer and settings) "
                "resumes, Save keeps the store as it is."
            )
        else:
            self.status.setText(f"Done: {text}.")
