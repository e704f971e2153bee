"""The settings half of the dock widget: every knob of ``Compressor(...)`` as a Qt control.

It only translates controls into keyword arguments; the core validates them (``TrainConfig``,
``QuantConfig`` and ``Compressor`` raise :class:`~napari_moec.errors.ConfigError` with a message
naming the bad value), and the widget shows that message next to the predicted size.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from qtpy.QtCore import QRegularExpression, Signal
from qtpy.QtGui import QRegularExpressionValidator
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QLabel,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)
from superqt import QCollapsible, QLabeledDoubleSlider

from .config import PRECISIONS, ArchConfig, QuantConfig, TrainConfig
from .errors import ConfigError
from .plan import check_ratio

__all__ = ["RATIO_PRESETS", "SettingsPanel", "parse_ratio"]

#: Ratios users reach for: 64x is near-lossless on CT, 6000x is the paper's extreme point.
RATIO_PRESETS = (64, 128, 256, 512, 1024, 2048, 4096, 6000)
_RATIO_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*[xX×]?\s*$")


def parse_ratio(text: str) -> float:
    """``"512x"``, ``"512"`` or ``"512.5 x"`` -> 512.0; anything else raises ConfigError."""
    match = _RATIO_RE.match(text)
    if not match:
        raise ConfigError(f"ratio {text!r} is not a number such as 256 or 256x")
    return check_ratio(float(match.group(1)))


def available_devices() -> list[str]:
    """Device choices that exist here: CUDA is offered only when torch can see a GPU."""
    return ["auto", "cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _spin(lo: int, hi: int, value: int, step: int = 1) -> QSpinBox:
    box = QSpinBox()
    box.setRange(lo, hi)
    box.setSingleStep(step)
    box.setValue(value)
    return box


def _dspin(lo: float, hi: float, value: float, decimals: int, step: float) -> QDoubleSpinBox:
    box = QDoubleSpinBox()
    box.setDecimals(decimals)
    box.setRange(lo, hi)
    box.setSingleStep(step)
    box.setValue(value)
    return box


class SettingsPanel(QWidget):
    """Target ratio, architecture, schedule and device, with advanced settings collapsed.

    Defaults come from :class:`TrainConfig` / :class:`QuantConfig`, so the widget and the library
    agree. ``changed`` fires on every edit (the widget debounces it to refresh the estimate).
    """

    changed = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        train, quant = TrainConfig(), QuantConfig()
        #: Not shown: how often loss/PSNR are measured (tests lower it for short runs).
        self.report_every = train.report_every

        self.ratio = QComboBox()
        self.ratio.setEditable(True)
        self.ratio.addItems([f"{r}x" for r in RATIO_PRESETS])
        self.ratio.setCurrentText("256x")
        self.ratio.setValidator(
            QRegularExpressionValidator(QRegularExpression(r"[0-9.]*\s*[xX×]?"))
        )
        self.ratio.setToolTip("original bytes / file bytes; pick a preset or type any number")
        self.experts = _spin(0, 64, 0)
        self.experts.setSpecialValueText("auto")  # 0: the core's choice (2, or 1 when tiny)
        self.experts.setToolTip(
            "number of SIREN experts; each learns one region of the volume. auto: 2, or 1 "
            "where the budget is too small to give each of 2 a useful width"
        )
        self.top_k = _spin(1, 2, 1)
        self.top_k.setToolTip("experts evaluated per voxel")
        self.steps = _spin(1, 1_000_000, train.steps, 100)
        self.device = QComboBox()
        self.device.addItems(available_devices())

        self.batch_size = _spin(1, 1 << 22, train.batch_size, 1024)
        self.lr = _dspin(1e-5, 0.5, train.lr, 5, 1e-4)
        self.balance_weight = _dspin(0.0, 10.0, train.balance_weight, 4, 0.005)
        self.balance_weight.setToolTip("λ: weight of the load-balance loss")
        self.capacity_factor = _dspin(0.1, 8.0, train.capacity_factor, 2, 0.05)
        self.freeze_router_at = QLabeledDoubleSlider()
        self.freeze_router_at.setRange(0.0, 1.0)
        self.freeze_router_at.setDecimals(2)
        self.freeze_router_at.setValue(train.freeze_router_at)
        self.freeze_router_at.setToolTip("fraction of the steps after which the router is frozen")
        self.seed = _spin(0, 2**31 - 1, train.seed)
        self.precision = QComboBox()
        self.precision.addItems(PRECISIONS)
        self.precision.setCurrentText(quant.precision)

        form = QFormLayout()
        form.addRow("Target ratio", self.ratio)
        form.addRow("Experts", self.experts)
        form.addRow("Top-k", self.top_k)
        form.addRow("Steps", self.steps)
        form.addRow("Device", self.device)
        advanced = QWidget()
        adv_form = QFormLayout(advanced)
        adv_form.addRow("Batch size", self.batch_size)
        adv_form.addRow("Learning rate", self.lr)
        adv_form.addRow("Balance λ", self.balance_weight)
        adv_form.addRow("Capacity factor", self.capacity_factor)
        adv_form.addRow("Freeze router at", self.freeze_router_at)
        adv_form.addRow("Seed", self.seed)
        adv_form.addRow("Stored precision", self.precision)
        self.advanced = QCollapsible("Advanced")
        self.advanced.addWidget(advanced)
        self.estimate = QLabel()
        self.estimate.setWordWrap(True)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(form)
        layout.addWidget(self.advanced)
        layout.addWidget(self.estimate)

        self.ratio.currentTextChanged.connect(self.changed)
        for box in (self.experts, self.top_k, self.steps, self.batch_size, self.seed):
            box.valueChanged.connect(self.changed)
        for box in (self.lr, self.balance_weight, self.capacity_factor, self.freeze_router_at):
            box.valueChanged.connect(self.changed)
        self.device.currentTextChanged.connect(self.changed)
        self.precision.currentTextChanged.connect(self.changed)

    def compressor_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for :class:`~napari_moec.training.Compressor`.

        Raises
        ------
        ConfigError
            A value the core rejects, with the core's message.
        """
        train = TrainConfig(
            steps=self.steps.value(),
            batch_size=self.batch_size.value(),
            lr=self.lr.value(),
            balance_weight=self.balance_weight.value(),
            capacity_factor=self.capacity_factor.value(),
            freeze_router_at=float(self.freeze_router_at.value()),
            report_every=self.report_every,
            seed=self.seed.value(),
        )
        return {
            "ratio": parse_ratio(self.ratio.currentText()),
            "arch": ArchConfig(num_experts=self.experts.value() or None, top_k=self.top_k.value()),
            "train": train,
            "quant": QuantConfig(precision=self.precision.currentText()),
            "device": self.device.currentText(),
        }

    def set_values(self, **values: Any) -> None:
        """Set controls by name (``ratio=64, steps=60, ...``): for scripts, the demo and tests."""
        for name, value in values.items():
            if name == "report_every":
                self.report_every = int(value)
                continue
            control = getattr(self, name, None)
            if isinstance(control, QComboBox):
                control.setCurrentText(f"{value:g}x" if name == "ratio" else str(value))
            elif control is not None and hasattr(control, "setValue"):
                control.setValue(value)
            else:
                raise AttributeError(f"no setting named {name!r}")

    def show_estimate(self, text: str, error: bool = False) -> None:
        """Show the predicted size (or why the settings cannot work) under the settings."""
        self.estimate.setText(text)
        self.estimate.setStyleSheet("color: #e06c75;" if error else "")
