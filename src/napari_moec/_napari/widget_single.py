"""The single-volume run of the dock widget: one network on an in-memory layer, its previews
shown as full-resolution live layers (``live_view``), the ``.moec`` result.

:class:`SingleRun` is one :class:`~.widget_panel.Run`; the tiled run of big layers is
``widget_tiled.TiledRun``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import replace

import numpy as np
from napari.qt.threading import create_worker

from ..config import PreviewConfig
from ..events import Finalizing, Progress, Started
from ..training import Compressor
from .live_view import FollowView, LiveFrame, LiveLayers
from .widget_panel import RunPanel
from .widget_request import RunRequest
from .widget_results import ResultsController
from .widget_run import Outcome, compress, freeze_gc, thaw_gc

__all__ = ["READOUT_INTERVAL", "SingleRun"]

#: Seconds between readout refreshes during training.
READOUT_INTERVAL = 0.25


class SingleRun:
    """Train one network on the request's layer in a napari worker, live.

    Owns the :class:`~napari_moec.training.Compressor` (``job``), the worker, the live layers
    (``live``) and the view follower; writes progress into ``panel`` and hands the outcome to
    ``results``. ``on_finished`` is called once the worker has ended, whatever the ending.

    Raises
    ------
    ConfigError
        The core rejects the request (checked here, before anything is shown).
    """

    def __init__(
        self,
        request: RunRequest,
        panel: RunPanel,
        results: ResultsController,
        *,
        preview: PreviewConfig,
        threads: int,
        on_finished: Callable[[], None],
    ) -> None:
        run = request.run
        if run.threads is None:
            run = replace(run, threads=threads)
        configs = {**request.configs, "run": run}
        # Only in-memory numpy layers come here (RunRequest.tiled_mode): ``asarray`` is then
        # the layer's own array, not a read.
        data = np.asarray(request.data)
        self.job = Compressor(data, request.ratio, preview=preview, **request.physical, **configs)
        self.request, self.panel, self.results = request, panel, results
        self.preview = preview
        self.on_finished = on_finished
        self.worker = None
        self.live: LiveLayers | None = None
        self._follow: FollowView | None = None
        self._closing = False
        self._last_readout = 0.0

    def start(self) -> None:
        job, source, panel = self.job, self.request.layer, self.panel
        self.live = LiveLayers(panel.viewer, source)
        # Adding a layer costs napari 0.2-1 s (vispy node, dims, labels colormap): pay it here,
        # on the click, so that during training previews only swap layer data (10-35 ms).
        self.live.prepare(job.header.shape, job.volume.dtype)
        # From now on every preview also decodes the plane shown, at full resolution.
        self._follow = FollowView(panel.viewer, source, job, max_voxels=self.preview.region_voxels)
        worker = create_worker(compress, job, _start_thread=False, _ignore_errors=True)
        worker.yielded.connect(self._on_event)
        worker.returned.connect(self._on_returned)
        worker.errored.connect(panel.worker_failed)
        worker.finished.connect(self._on_finished)
        worker.paused.connect(self._on_paused)
        worker.resumed.connect(self._on_resumed)
        # A module function, not a method: the freeze ends even if this run is gone by then.
        worker.finished.connect(thaw_gc)
        self.worker = worker
        panel.progress.setRange(0, job.train_config.steps)
        panel.progress.setValue(0)
        panel.status.setText("Starting…")
        panel.set_running(True)
        freeze_gc()  # after the click's own allocations (the live layers): see freeze_gc
        self.worker.start()

    def toggle_pause(self) -> None:
        if self.worker.is_paused:
            self.worker.resume()
            self.panel.pause_button.setText("Pause")
        else:
            self.worker.pause()
            self.panel.pause_button.setText("Resume")

    def stop(self) -> None:
        """The best model so far is still quantized, coded and returned."""
        self.job.stop()
        if self.worker.is_paused:
            self.worker.resume()
        self.panel.stopping("Stopping: keeping the best model so far…")

    def shutdown(self) -> None:
        self._closing = True  # queued previews must not touch a closing viewer
        self.job.stop()
        self.worker.quit()  # acts at the next yield, also while paused

    # -- worker signals ----------------------------------------------------------------------
    def _on_event(self, event) -> None:
        if self._closing:
            return
        panel = self.panel
        if isinstance(event, Progress):
            now = time.perf_counter()
            # Steps can come 1000 per second on a GPU. Every text change repaints the window,
            # which under software OpenGL (Xvfb, remote desktops) costs 30-60 ms: refresh the
            # readouts 4 times a second, enough to read them.
            if now - self._last_readout < READOUT_INTERVAL and event.step < event.total_steps:
                return
            self._last_readout = now
            panel.progress.setValue(event.step)
            panel.progress.setFormat(f"%p%  ·  ETA {event.eta:.0f} s")
            panel.readouts["step"].setText(f"{event.step} / {event.total_steps} ({event.phase})")
            if math.isfinite(event.loss):  # NaN until the first report_every steps are done
                panel.readouts["loss"].setText(f"{event.loss:.3g}")
                panel.readouts["psnr"].setText(f"{event.psnr:.2f} dB (training estimate)")
            load = "  ".join(f"E{i} {v:.0%}" for i, v in enumerate(event.expert_load))
            panel.readouts["load"].setText(load)
        elif isinstance(event, LiveFrame):
            self.live.show(event)
        elif isinstance(event, Started):
            panel.status.setText(
                f"Training on {event.device}: {event.num_parameters:,} parameters, "
                f"≤ {event.budget_nbytes:,} B."
            )
        elif isinstance(event, Finalizing):
            panel.pause_button.setEnabled(False)
            panel.stop_button.setEnabled(False)
            panel.progress.setRange(0, 0)  # busy: quantizing, coding and decoding take a moment
            panel.status.setText(f"Step {event.step}: quantizing, coding and decoding…")

    def _on_paused(self) -> None:
        self.panel.status.setText("Paused.")

    def _on_resumed(self) -> None:
        self.panel.status.setText("Training…")

    def _on_returned(self, outcome: Outcome) -> None:
        if self._closing:
            return
        # The live layers already show it: the worker's final frame.
        self.results.take(outcome, self.live.name)

    def _on_finished(self) -> None:
        if self._follow is not None:
            self._follow.disconnect()
            self._follow = None
        if self._closing:
            # The viewer or the dock is going: its Qt objects may be deleted already (a grid
            # run's store outlasted the close in the test of it).
            return
        self.on_finished()
