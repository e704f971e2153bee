"""The "MoEC compression" dock widget: pick a volume, press Start, watch it compress.

It holds no ML: settings become ``Compressor(...)`` arguments (``_widget_settings``), the core's
generator runs in a napari worker (``_widget_run``) and its previews become full-resolution
frames of the live layers, sharp on the plane the viewer shows (``_live_view``, run by
``_widget_single``). Big or lazy layers (dask, zarr, multiscale) are compressed tile by tile on
Dask instead (``_widget_tiled``), their live layers filling in as tiles land. Results (save,
load, compare) live in ``_widget_results``; this module builds the panel and dispatches.
"""

from __future__ import annotations

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
from ._live_view import FollowView, LiveLayers
from ._widget_lifecycle import LifecycleMixin, is_volume, no_source_message, volume_data
from ._widget_results import ResultsMixin
from ._widget_settings import SettingsPanel
from ._widget_single import SingleRunMixin
from ._widget_tiled import TiledMixin, wants_tiled
from .config import PreviewConfig
from .devices import available_cores
from .errors import ConfigError
from .plan import plan

__all__ = ["MoecWidget"]


class MoecWidget(LifecycleMixin, ResultsMixin, SingleRunMixin, TiledMixin, QWidget):
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
        #: The running job: a Compressor, or a TiledCompressor for big layers.
        self._compressor = None
        self._live: LiveLayers | None = None
        self._follow: FollowView | None = None
        self._tiled_live = None
        self._paused = False
        self._resumable: dict[tuple, str] = {}  # stopped tiled runs by (layer, settings)
        self._tiles_done = (0, 0)
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

    def _tiled(self, layer) -> bool:
        return wants_tiled(layer, self.settings.tiled.values()["mode"])

    def update_estimate(self) -> None:
        """Predicted file size and parameter count (or the tiled plan) for the settings as
        typed: from the layer's shape and dtype, never its voxels, so it stays instant."""
        try:
            layer, physical, settings = self._source_and_settings()
            if self._tiled(layer):
                self.settings.show_estimate(self.tiled_estimate(layer, physical, settings))
                return
            data = volume_data(layer)
            p = plan(data.shape, data.dtype, settings["ratio"], arch=settings["arch"],
                     quant=settings["quant"], **physical)  # fmt: skip
        except ConfigError as exc:
            self.settings.show_estimate(str(exc), error=True)
            return
        m = p.model
        if m.num_experts == 1:
            # Nothing to partition: say how to get the learned partition back.
            shape = f"width {m.hidden_features} · one network, no router (Experts ≥ 2 to partition)"
        else:
            shape = f"width {m.hidden_features} × {m.num_experts} experts"
        self.settings.show_estimate(
            f"≈ {p.predicted_nbytes:,} B file (budget {p.budget:,} B) · "
            f"{p.num_parameters:,} parameters · {shape}"
        )

    # -- runs --------------------------------------------------------------------------------
    def start(self) -> None:
        """Start compressing the Source layer in a worker thread: one network for an in-memory
        layer, tile by tile on Dask for a big or lazy one (``_widget_tiled``)."""
        if self.worker is not None:
            return
        layer = self.source_layer()
        try:
            if layer is not None and self._tiled(layer):
                self._start_tiled()
                return
            compressor = self._make_compressor()
        except ConfigError as exc:
            message = str(exc)
            self._show_error(message if message.startswith("MoEC") else f"MoEC: {message}")
            return
        self._start_single(compressor)

    def _is_tiled_run(self) -> bool:
        return self._compressor is not None and hasattr(self._compressor, "prioritize")

    def toggle_pause(self) -> None:
        """Pause or resume: between two optimiser steps, on every Dask worker for tiled runs."""
        if self.worker is None:
            return
        if self._is_tiled_run():
            self._toggle_tiled_pause()
        elif self.worker.is_paused:
            self.worker.resume()
            self.pause_button.setText("Pause")
        else:
            self.worker.pause()
            self.pause_button.setText("Resume")

    def stop(self) -> None:
        """End the run now. Single volume: the best model so far is still quantized, coded and
        returned. Tiled: finished tiles stay in the store, which Start resumes."""
        if self.worker is None or self._compressor is None:
            return
        tiled = self._is_tiled_run()
        self._compressor.stop()  # a tiled job reaches its Dask workers, paused ones too
        if not tiled and self.worker.is_paused:
            self.worker.resume()
        self.pause_button.setText("Pause")
        self.pause_button.setEnabled(False)
        self.stop_button.setEnabled(False)
        self.status.setText(
            "Stopping: keeping the finished tiles…" if tiled
            else "Stopping: keeping the best model so far…"
        )  # fmt: skip

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

    def _show_error(self, message: str) -> None:
        show_error(message)
