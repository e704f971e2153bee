"""The single-volume run of the dock widget: one network on an in-memory layer, its previews
shown as full-resolution live layers (``_live_view``), the ``.moec`` result.

A mixin of :class:`~napari_moec._widget.MoecWidget`; the tiled run of big layers is
``_widget_tiled``.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace

import numpy as np
from napari.qt.threading import create_worker

from ._live_view import FollowView, LiveFrame, LiveLayers
from ._widget_lifecycle import volume_data
from ._widget_run import Outcome, compress, describe_error, freeze_gc, thaw_gc
from .events import Finalizing, Progress, Started
from .training import Compressor

__all__ = ["READOUT_INTERVAL", "SingleRunMixin"]

#: Seconds between readout refreshes during training.
READOUT_INTERVAL = 0.25


class SingleRunMixin:
    """Start, follow and end a single-volume training run."""

    def _make_compressor(self) -> Compressor:
        """A Compressor for the current source and settings; raises ConfigError if impossible.
        Only in-memory numpy layers come here (``_widget_tiled.wants_tiled``): ``asarray``
        is then the layer's own array, not a read."""
        layer, physical, settings = self._source_and_settings()
        if settings["run"].threads is None:
            settings["run"] = replace(settings["run"], threads=self.threads)
        data = np.asarray(volume_data(layer))
        return Compressor(data, preview=self.preview, **physical, **settings)

    def _start_single(self, compressor: Compressor) -> None:
        self._compressor = compressor
        self._closing = False
        source = self.source_layer()
        self._live = LiveLayers(self.viewer, source)
        # Adding a layer costs napari 0.2-1 s (vispy node, dims, labels colormap): pay it here,
        # on the click, so that during training previews only swap layer data (10-35 ms).
        self._live.prepare(compressor.header.shape, compressor.volume.dtype)
        # From now on every preview also decodes the plane shown, at full resolution.
        self._follow = FollowView(
            self.viewer, source, compressor, max_voxels=self.preview.region_voxels
        )
        self._watch_window()
        worker = create_worker(compress, compressor, _start_thread=False, _ignore_errors=True)
        worker.yielded.connect(self._on_event)
        worker.returned.connect(self._on_returned)
        worker.errored.connect(self._on_error)
        worker.finished.connect(self._on_finished)
        worker.paused.connect(self._on_paused)
        worker.resumed.connect(self._on_resumed)
        # A module function, not a method: the freeze ends even if this widget is gone by then.
        worker.finished.connect(thaw_gc)
        self.worker = worker
        self.progress.setRange(0, compressor.train_config.steps)
        self.progress.setValue(0)
        self.status.setText("Starting…")
        self._set_running(True)
        freeze_gc()  # after the click's own allocations (the live layers): see freeze_gc
        worker.start()

    def _on_event(self, event) -> None:
        if self._closing:
            return
        if isinstance(event, Progress):
            now = time.perf_counter()
            # Steps can come 1000 per second on a GPU. Every text change repaints the window,
            # which under software OpenGL (Xvfb, remote desktops) costs 30-60 ms: refresh the
            # readouts 4 times a second, enough to read them.
            if now - self._last_readout < READOUT_INTERVAL and event.step < event.total_steps:
                return
            self._last_readout = now
            self.progress.setValue(event.step)
            self.progress.setFormat(f"%p%  ·  ETA {event.eta:.0f} s")
            self.readouts["step"].setText(f"{event.step} / {event.total_steps} ({event.phase})")
            if math.isfinite(event.loss):  # NaN until the first report_every steps are done
                self.readouts["loss"].setText(f"{event.loss:.3g}")
                self.readouts["psnr"].setText(f"{event.psnr:.2f} dB (training estimate)")
            load = "  ".join(f"E{i} {v:.0%}" for i, v in enumerate(event.expert_load))
            self.readouts["load"].setText(load)
        elif isinstance(event, LiveFrame):
            self._live.show(event)
        elif isinstance(event, Started):
            self.status.setText(
                f"Training on {event.device}: {event.num_parameters:,} parameters, "
                f"≤ {event.budget_nbytes:,} B."
            )
        elif isinstance(event, Finalizing):
            self.pause_button.setEnabled(False)
            self.stop_button.setEnabled(False)
            self.progress.setRange(0, 0)  # busy: quantizing, coding and decoding take a moment
            self.status.setText(f"Step {event.step}: quantizing, coding and decoding…")

    def _on_paused(self) -> None:
        self.status.setText("Paused.")

    def _on_resumed(self) -> None:
        self.status.setText("Training…")

    def _on_returned(self, outcome: Outcome) -> None:
        if self._closing:
            return
        self.result = outcome  # the live layers already show it: the worker's final frame
        self._show_result(outcome.compressed, self._live.name)

    def _on_error(self, exc: BaseException) -> None:
        message = describe_error(exc)
        self.status.setText(message)
        self._show_error(message)

    def _on_finished(self) -> None:
        self.worker = None
        self._compressor = None
        if self._follow is not None:
            self._follow.disconnect()
            self._follow = None
        self.progress.setRange(0, 1)
        self.progress.setValue(1 if self.result is not None else 0)
        self._set_running(False)
