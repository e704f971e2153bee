"""The "MoEC compression" dock widget: pick a volume, press Start, watch it compress.

It holds no ML and is made of parts that own their state:

- :class:`~.widget_settings.SettingsPanel`: the controls, generated from the option
  declarations; it gives the ratio and the configs (``run_options.configs_from_options``).
- :class:`~.widget_request.RunRequest`: what Start asks for (layer, spacing, unit, ratio,
  configs), read once from the Source picker and the panel.
- a :class:`~.widget_panel.Run`: :class:`~.widget_single.SingleRun` (one network, live
  full-resolution previews) or :class:`~.widget_tiled.TiledRun` (big or lazy layers, tile by
  tile on Dask); each owns its job, worker and live layers, and writes into the
  :class:`~.widget_panel.RunPanel` (the displays this module builds).
- :class:`~.widget_results.ResultsController`: the current result and Save, Load, Compare.
- :class:`~.widget_lifecycle.CloseWatcher`: stops the run when the widget or napari closes.

This module builds the panel, turns the buttons into calls on those parts and keeps the
controls' enabled state.
"""

from __future__ import annotations

from napari.utils.notifications import show_error
from qtpy.QtCore import QTimer
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

from ..config import PreviewConfig
from ..devices import available_cores
from ..errors import ConfigError
from ..plan import plan
from .layers import warm_up_layer_machinery
from .widget_lifecycle import CloseWatcher, is_volume
from .widget_panel import Run, RunPanel
from .widget_request import RunRequest, find_source, make_request
from .widget_results import ResultsController
from .widget_settings import SettingsPanel
from .widget_single import SingleRun
from .widget_tiled import TiledRun, TiledStores, tiled_estimate

__all__ = ["MoecWidget"]


class MoecWidget(QWidget):
    """Dock widget that compresses an Image layer into a ``.moec`` file, or a big / lazy one
    into a tiled store on Dask, live.

    Parameters
    ----------
    napari_viewer
        Given by napari (the name is what napari looks for).

    Attributes
    ----------
    preview : PreviewConfig
        When live previews come (every N steps and/or T seconds, and once at the end of
        training) and what they may cost (see ``live_view`` for the bound).
    threads : int
        CPU threads for training unless the settings set them; one core fewer than available,
        so the GUI stays smooth.
    run : Run or None
        The running compression (a SingleRun or a TiledRun), None between runs.
    results : ResultsController
        The current result, Save, Load and Compare.
    """

    def __init__(self, napari_viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.preview = PreviewConfig(every_steps=50, every_seconds=1.0)
        #: Torch threads for CPU training: one core is left to napari's event loop.
        self.threads = max(1, available_cores() - 1)
        warm_up_layer_machinery()
        self.run: Run | None = None
        self._stores = TiledStores()  # stopped tiled runs, resumed by Start

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

        self.panel = RunPanel(
            viewer=self.viewer,
            progress=self.progress,
            status=self.status,
            readouts=self.readouts,
            pause_button=self.pause_button,
            stop_button=self.stop_button,
            show_error=self._show_error,
            set_running=self._set_running,
        )
        self.results = ResultsController(
            self.panel, self, self.compare_button, self.source_layer, self._load_changed
        )
        self._close_watcher = CloseWatcher(self)

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

    # -- what tests, scripts and the demo read --------------------------------------------
    @property
    def worker(self):
        """The running compression's napari worker, or None."""
        return None if self.run is None else self.run.worker

    @property
    def result(self):
        """The last run's or load's result (``Outcome`` or ``LazyResult``), or None."""
        return self.results.result

    @property
    def load_worker(self):
        return self.results.load_worker

    @property
    def compare_worker(self):
        return self.results.compare_worker

    @property
    def last_comparison(self):
        return self.results.last_comparison

    def save(self, path=None):
        """Save the result (see :meth:`ResultsController.save`)."""
        return self.results.save(path)

    def load(self, path=None):
        """Open a ``.moec`` or a store (see :meth:`ResultsController.load`)."""
        return self.results.load(path)

    def compare(self) -> None:
        """Compare the result with the Source layer (see :meth:`ResultsController.compare`)."""
        self.results.compare()

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
        return find_source(self.viewer.layers, self.source.currentText())

    def request(self) -> RunRequest:
        """What Start would run now: the Source layer and the settings, read once; raises
        ConfigError when there is no usable source or a setting is invalid."""
        return make_request(
            self.viewer.layers,
            self.source.currentText(),
            self.settings.compressor_kwargs,
            self.settings.tiled.values,
        )

    def update_estimate(self) -> None:
        """Predicted file size and parameter count (or the tiled plan) for the settings as
        typed: from the layer's shape and dtype, never its voxels, so it stays instant."""
        try:
            request = self.request()
            if request.tiled_mode:
                self.settings.show_estimate(tiled_estimate(request))
                return
            # plan() is the one sizing and budget policy (the CLI and Compressor call it too)
            # (a PSNR target sizes the run: its ratio is only the ceiling, as in Compressor)
            p = plan(request.shape, request.dtype, request.ratio, arch=request.arch,
                     quant=request.quant, quality_target=request.train.target_psnr is not None,
                     **request.physical)  # fmt: skip
        except ConfigError as exc:
            self.settings.show_estimate(str(exc), error=True)
            return
        m = p.model
        family = "grid · " if p.family == "grid" else ""
        if m.num_experts == 1:
            # Nothing to partition: say how to get the learned partition back.
            shape = f"width {m.hidden_features} · one network, no router (Experts ≥ 2 to partition)"
        else:
            shape = f"width {m.hidden_features} × {m.num_experts} experts, top-{m.top_k}"
        self.settings.show_estimate(
            f"≈ {p.predicted_nbytes:,} B file (budget {p.budget:,} B) · "
            f"{p.num_parameters:,} parameters · {family}{shape}"
        )

    # -- runs --------------------------------------------------------------------------------
    def start(self) -> None:
        """Start compressing the Source layer in a worker thread: one network for an in-memory
        layer (:class:`SingleRun`), tile by tile on Dask for a big or lazy one
        (:class:`TiledRun`)."""
        if self.run is not None:
            return
        try:
            request = self.request()
            if request.tiled_mode:
                run = TiledRun(request, self.panel, self.results, self._stores,
                               on_finished=self._run_finished)  # fmt: skip
            else:
                run = SingleRun(request, self.panel, self.results, preview=self.preview,
                                threads=self.threads, on_finished=self._run_finished)  # fmt: skip
        except ConfigError as exc:
            message = str(exc)
            self._show_error(message if message.startswith("MoEC") else f"MoEC: {message}")
            return
        self.run = run
        self._close_watcher.watch_window()
        run.start()

    def toggle_pause(self) -> None:
        """Pause or resume: between two optimiser steps, on every Dask worker for tiled runs."""
        if self.run is not None:
            self.run.toggle_pause()

    def stop(self) -> None:
        """End the run now. Single volume: the best model so far is still quantized, coded and
        returned. Tiled: finished tiles stay in the store, which Start resumes."""
        if self.run is not None:
            self.run.stop()

    def shutdown(self) -> None:
        """Stop the run without finishing the file: the widget or the viewer is closing."""
        if self.run is not None:
            self.run.shutdown()

    def _run_finished(self) -> None:
        self.run = None
        self.progress.setRange(0, 1)
        self.progress.setValue(1 if self.result is not None else 0)
        self._set_running(False)

    def _load_changed(self) -> None:
        self._set_running(self.run is not None)

    def _set_running(self, running: bool) -> None:
        loading = self.results.load_worker is not None
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

    def _save_clicked(self) -> None:
        self.results.save()

    def _load_clicked(self) -> None:
        self.results.load()

    def _show_error(self, message: str) -> None:
        show_error(message)
