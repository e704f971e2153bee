"""The "Big volumes" settings of the dock widget: when and how a layer is compressed tile by
tile on a Dask cluster (:class:`~napari_moec.tiled.runner.TiledCompressor`).

These are options of the tiled engine's constructor rather than ``option()`` declarations of
the core configs (which build the single-volume controls), so they are made by hand here; each
has an *auto* state, the engine's own default.
"""

from __future__ import annotations

from typing import Any

from qtpy.QtCore import Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLineEdit,
    QSpinBox,
    QWidget,
)

from ..errors import ConfigError

__all__ = ["MODES", "TILED_ABOVE_VOXELS", "TiledSettings"]

#: Layers with more voxels than this are compressed tile by tile even when they are in memory:
#: one network per 256³ block is where tiling stops costing quality (docs/tiled.md), and the
#: single-volume live view holds full-resolution copies of the volume.
TILED_ABOVE_VOXELS = 256**3
#: "auto": tiled for lazy (dask, zarr, multiscale) layers and above TILED_ABOVE_VOXELS;
#: "tiled": always.
MODES = ("auto", "tiled")


class _AutoSpin(QWidget):
    """An integer with an *auto* check box (ticked: None)."""

    def __init__(self, lo: int, hi: int, value: int, tooltip: str) -> None:
        super().__init__()
        self.auto = QCheckBox("auto")
        self.auto.setChecked(True)
        self.spin = QSpinBox()
        self.spin.setRange(lo, hi)
        self.spin.setValue(value)
        self.spin.setVisible(False)
        self.auto.toggled.connect(lambda ticked: self.spin.setVisible(not ticked))
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.auto)
        layout.addWidget(self.spin)
        self.setToolTip(tooltip)

    @property
    def value(self) -> int | None:
        return None if self.auto.isChecked() else self.spin.value()

    @value.setter
    def value(self, value: int | None) -> None:
        self.auto.setChecked(value is None)
        if value is not None:
            self.spin.setValue(int(value))


class TiledSettings(QWidget):
    """Mode, tile edge, local workers and a scheduler address; ``changed`` on every edit."""

    changed = Signal()
    NAMES = ("mode", "tile", "workers", "scheduler")

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.mode = QComboBox()
        self.mode.addItems(MODES)
        self.mode.setToolTip(
            "auto: tile by tile on Dask for lazy (dask, zarr, multiscale) layers and above "
            f"{TILED_ABOVE_VOXELS:,} voxels; tiled: always"
        )
        self.tile = _AutoSpin(8, 1024, 64, "tile edge in voxels; auto: the smallest whose "
                              "share of the budget reaches 4 KiB")  # fmt: skip
        self.workers = _AutoSpin(1, 1024, 2, "local Dask workers; auto: one per core")
        self.scheduler = QLineEdit()
        self.scheduler.setPlaceholderText("local cluster (or tcp://host:8786)")
        self.scheduler.setToolTip(
            "address of a running Dask scheduler; empty: start a LocalCluster for the run"
        )
        form = QFormLayout(self)
        form.setContentsMargins(0, 0, 0, 0)
        form.addRow("Mode", self.mode)
        form.addRow("Tile edge", self.tile)
        form.addRow("Workers", self.workers)
        form.addRow("Dask scheduler", self.scheduler)
        self.mode.currentTextChanged.connect(self._emit)
        for spin in (self.tile, self.workers):
            spin.auto.toggled.connect(self._emit)
            spin.spin.valueChanged.connect(self._emit)
        self.scheduler.textChanged.connect(self._emit)

    def _emit(self, *_) -> None:
        self.changed.emit()

    def values(self) -> dict[str, Any]:
        return {
            "mode": self.mode.currentText(),
            "tile": self.tile.value,
            "workers": self.workers.value,
            "scheduler": self.scheduler.text().strip() or None,
        }

    def set_value(self, name: str, value: Any) -> None:
        if name == "mode":
            if value not in MODES:
                raise ConfigError(f"mode must be one of {MODES}, got {value!r}")
            self.mode.setCurrentText(value)
        elif name == "scheduler":
            self.scheduler.setText(value or "")
        else:
            getattr(self, name).value = value
