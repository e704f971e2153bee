"""The "MoEC compression" dock widget: pick a volume, press Start, watch it compress.

It holds no ML: settings become ``Compressor(...)`` arguments (``_widget_settings``), the core's
generator runs in a napari worker (``_widget_run``) and its previews become full-resolution
frames of the live layers, sharp on the plane the viewer shows (``_live_view``). Results (save,
load, compare) live in ``_widget_results``.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace

import numpy as np
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error
from qtpy.QtCore import QObject, QTimer
from qtpy.QtWidgets import (
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ._layers import warm_up_layer_machinery
from ._live_view import FollowView, LiveFrame, LiveLayers
from ._widget_lifecycle import LifecycleMixin, is_volume, no_source_message
from ._widget_results import ResultsMixin
from ._widget_run import Outcome, compress, describe_error, freeze_gc, thaw_gc
from ._widget_settings import SettingsPanel
from .config import PreviewConfig
from .devices import available_cores
from .errors import ConfigError
from .events import Finalizing, Progress, Started
from .plan import plan
from .training import Compressor

__all__ = ["MoecWidget"]


#: Seconds between readout refreshes during training.
READOUT_INTERVAL = 0.25


class MoecWidget(LifecycleMixin, ResultsMixin, QWidget):
    """Dock widget that compresses an Image layer into a ``.moec`` file, live.

    Parameters
    ----------
    napari_viewer
        Given by napari (the name is what napari looks for).

    Attributes
    ----------
    preview : PreviewConfig
        When live previews come (every N steps and/or T seconds, and once at the end of
        training) and what they may cost (see ``_live_view`` for the bound).
    threads : int
        CPU threads for training unless the settings set them; one core fewer than available,
        so the GUI stays smooth.
    worker
        The running GeneratorWorker, or None.
    """

    def __init__(self, napari_viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.preview = PreviewConfig(every_steps=50, every_seconds=1.0)
        #: Torch threads for CPU training: one core is left to napari's event loop.
        self.threads = max(1, available_cores() - 1)
        warm_up_layer_machinery()
        self.worker = None
        self.compare_worker = None
        self.load_worker = None
        self.result = None  # Outcome of the last run or load
        self._compressor: Compressor | None = None
        self._live: LiveLayers | None = None
        self._follow: FollowView | None = None
        self._watched: QObject | None = None
        self._last_readout = 0.0
        self._closing = False

        self.source = QComboBox()
        self.settings = SettingsPanel()
        self.start_button = QPushButton("Start")
        self.pause_button = QPushButton("Pause")
        self.stop_button = QPushButton("Stop")
        self.progress = QProgressBar()
        self.status = QLabel("Pick a 3D/4D image and press Start.")
        self.status.setWordWrap(True)
        self.readouts = {k: QLabel("–") for k in ("step", "loss", "psnr", "load", "result")}
        for label in self.readouts.values():
            label.setWordWrap(True)
        self.save_button = QPushButton("Save…")
        self.load_button = QPushButton("Load…")
        self.compare_button = QPushButton("Compare")

        top = QFormLayout()
        top.addRow("Source", self.source)
        buttons = QHBoxLayout()
        for b in (self.start_button, self.pause_button, self.stop_button):
            buttons.addWidget(b)
        readout = QFormLayout()
        titles = ("Step", "Loss", "PSNR", "Expert load", "Result")
        for title, label in zip(titles, self.readouts.values(), strict=True):
            readout.addRow(title, label)
        files = QHBoxLayout()
        for b in (self.save_button, self.load_button, self.compare_button):
            files.addWidget(b)
        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addWidget(self.settings)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addLayout(readout)
        layout.addLayout(files)
        layout.addStretch(1)

        self._estimate_timer = QTimer(self)
        self._estimate_timer.setSingleShot(True)
        self._estimate_timer.setInterval(250)  # debounce: one estimate after typing pauses
        self._estimate_timer.timeout.connect(self.update_estimate)
        self.settings.changed.connect(self._estimate_timer.start)
        self.source.currentTextChanged.connect(self._estimate_timer.start)
        self.start_button.clicked.connect(self.start)
        self.pause_button.clicked.connect(self.toggle_pause)
        self.stop_button.clicked.connect(self.stop)
        # Bound methods, not lambdas: Qt then holds the widget weakly, so closing napari frees it.
        self.save_button.clicked.connect(self._save_clicked)
        self.load_button.clicked.connect(self._load_clicked)
        self.compare_button.clicked.connect(self.compare)
        events = self.viewer.layers.events
        for emitter in (events.inserted, events.removed, events.moved):
            emitter.connect(self.refresh_sources)
        self.refresh_sources()
        self._set_running(False)
        self.update_estimate()

    # -- source picker ---------------------------------------------------------------------
    def refresh_sources(self, event=None) -> None:
        """Keep the picker equal to the viewer's 3D/4D Image layers, keeping the selection."""
        for layer in self.viewer.layers:
            layer.events.name.connect(self.refresh_sources)  # renames; connecting twice is a no-op
        names = [layer.name for layer in self.viewer.layers if is_volume(layer)]
        current = self.source.currentText()
        self.source.blockSignals(True)
        self.source.clear()
        self.source.addItems(names)
        if current in names:
            self.source.setCurrentText(current)
        elif names:
            active = self.viewer.layers.selection.active
            if active is not None and active.name in names:
                self.source.setCurrentText(active.name)
        self.source.blockSignals(False)
        if self.source.currentText() != current:
            self._estimate_timer.start()

    def source_layer(self):
        """The Image layer chosen in Source, or None."""
        name = self.source.currentText()
        for layer in self.viewer.layers:
            if layer.name == name and is_volume(layer):
                return layer
        return None

    def _source_and_settings(self):
        """The source layer, its physical metadata and the settings as Compressor keywords;
        raises ConfigError when there is no usable source or a setting is invalid."""
        layer = self.source_layer()
        if layer is None:
            raise ConfigError(no_source_message(self.viewer.layers).removeprefix("MoEC: "))
        units = {format(u, "~") for u in layer.units}
        unit = units.pop() if len(units) == 1 and "px" not in units else None
        physical = {"spacing": tuple(float(s) for s in layer.scale), "unit": unit}
        return layer, physical, self.settings.compressor_kwargs()

    def _make_compressor(self) -> Compressor:
        """A Compressor for the current source and settings; raises ConfigError if impossible."""
        layer, physical, settings = self._source_and_settings()
        if settings["run"].threads is None:
            settings["run"] = replace(settings["run"], threads=self.threads)
        return Compressor(np.asarray(layer.data), preview=self.preview, **physical, **settings)

    def update_estimate(self) -> None:
        """Predicted file size and parameter count for the settings as typed.

        Uses :func:`~napari_moec.plan.plan` on the layer's shape and dtype: no voxel is read,
        so this stays instant on big layers.
        """
        try:
            layer, physical, settings = self._source_and_settings()
            p = plan(
                layer.data.shape,
                layer.data.dtype,
                settings["ratio"],
                arch=settings["arch"],
                quant=settings["quant"],
                **physical,
            )
        except ConfigError as exc:
            self.settings.show_estimate(str(exc), error=True)
            return
        m = p.model
        self.settings.show_estimate(
            f"≈ {p.predicted_nbytes:,} B file (budget {p.budget:,} B) · "
            f"{p.num_parameters:,} parameters · width {m.hidden_features} × {m.num_experts} experts"
        )

    # -- training ----------------------------------------------------------------------------
    def start(self) -> None:
        """Start compressing the Source layer in a worker thread."""
        if self.worker is not None:
            return
        try:
            compressor = self._make_compressor()
        except ConfigError as exc:
            message = str(exc)
            show_error(message if message.startswith("MoEC") else f"MoEC: {message}")
            return
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

    def toggle_pause(self) -> None:
        """Pause or resume training (acts between two optimiser steps)."""
        if self.worker is None:
            return
        if self.worker.is_paused:
            self.worker.resume()
            self.pause_button.setText("Pause")
        else:
            self.worker.pause()
            self.pause_button.setText("Resume")

    def stop(self) -> None:
        """End training now; the best model so far is still quantized, coded and returned."""
        if self.worker is None or self._compressor is None:
            return
        self._compressor.stop()
        if self.worker.is_paused:
            self.worker.resume()
        self.pause_button.setText("Pause")
        self.pause_button.setEnabled(False)
        self.stop_button.setEnabled(False)
        self.status.setText("Stopping: keeping the best model so far…")

    def _set_running(self, running: bool) -> None:
        loading = self.load_worker is not None
        self.start_button.setEnabled(not running and not loading)
        self.pause_button.setEnabled(running)
        self.stop_button.setEnabled(running)
        self.pause_button.setText("Pause")
        self.source.setEnabled(not running)
        self.settings.setEnabled(not running)
        self.load_button.setEnabled(not running and not loading)
        has_result = self.result is not None and not running
        self.save_button.setEnabled(has_result)
        self.compare_button.setEnabled(has_result)

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
        show_error(message)

    def _on_finished(self) -> None:
        self.worker = None
        self._compressor = None
        if self._follow is not None:
            self._follow.disconnect()
            self._follow = None
        self.progress.setRange(0, 1)
        self.progress.setValue(1 if self.result is not None else 0)
        self._set_running(False)
