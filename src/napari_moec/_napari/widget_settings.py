"""The settings half of the dock widget, built with magicgui from the options' declarations.

Every ``option()`` field of the dataclasses in :data:`~napari_moec.config.OPTION_CONFIGS` whose
``ui`` is "basic" or "advanced" becomes a magicgui control (:func:`magicgui.widgets.create_widget`
from its type, default, range, step and choices), labelled with its ``label`` and explained by
its ``help`` in a tooltip: the basic ones always shown, the advanced ones in a collapsed
section. An option that may be left to napari-moec (None, "auto") gets an *auto* check box that
hides its control while ticked. An option added to a dataclass appears here by itself.

The hand-made controls are the target: a choice of "ratio" (an editable list of presets, since
any ratio is valid and the presets are only suggestions) or "PSNR" (a quality target in dB, grid
model: the file is then the smallest that reaches it, under a ceiling of
:data:`~napari_moec.training.PSNR_CAP_RATIO`). The panel only translates controls into config
dataclasses; the core validates them (:class:`~napari_moec.errors.ConfigError`, with a message
naming the bad value), and the widget shows that message next to the predicted size.
"""

from __future__ import annotations

import math
import re
import typing
from typing import Any

import torch
from magicgui.widgets import CheckBox, ComboBox, Container, FloatSpinBox, create_widget
from qtpy.QtCore import QRegularExpression, Signal
from qtpy.QtGui import QRegularExpressionValidator
from qtpy.QtWidgets import QComboBox, QFormLayout, QLabel, QVBoxLayout, QWidget
from superqt import QCollapsible

from ..config import OPTION_CONFIGS, option_fields
from ..errors import ConfigError
from ..families.siren.tutel_backend import available_backends
from ..plan import check_ratio
from ..run_options import configs_from_options, option_names
from ..training import PSNR_CAP_RATIO
from .widget_tiled_settings import TiledSettings

__all__ = ["RATIO_PRESETS", "OptionControl", "SettingsPanel", "parse_ratio"]

#: Ratios users reach for: 64x is near-lossless on CT, 6000x is the paper's extreme point.
RATIO_PRESETS = (64, 128, 256, 512, 1024, 2048, 4096, 6000)
#: Where the widget starts unlike the library and the CLI: the plugin is for watching what the
#: model learns, so it starts with the router on. The grid family (its partition separates
#: air, soft tissue and bone on the CT head: benchmarks/research/grid_experts) with 4 experts
#: and the family's "auto" top-k (2), which the time-to-quality runs measure against one
#: network at equal bytes and time (docs/benchmarks/time_to_quality.md).
WIDGET_DEFAULTS: dict[str, Any] = {"model": "grid", "num_experts": 4}
_RATIO_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*[xX×]?\s*$")
#: Largest value a spin box offers for an unbounded option without a ``ui_max``.
_UNBOUNDED_UI_MAX = 1e6


def parse_ratio(text: str) -> float:
    """``"512x"``, ``"512"`` or ``"512.5 x"`` -> 512.0; anything else raises ConfigError."""
    match = _RATIO_RE.match(text)
    if not match:
        raise ConfigError(f"ratio {text!r} is not a number such as 256 or 256x")
    return check_ratio(float(match.group(1)))


def available_devices() -> list[str]:
    """Device choices that exist here: CUDA is offered only when torch can see a GPU."""
    return ["auto", "cpu"] + (["cuda"] if torch.cuda.is_available() else [])


#: Options whose declared choices are narrowed to what this machine has ("tutel" only where
#: Tutel imports).
_AVAILABLE_CHOICES = {"device": available_devices, "backend": available_backends}


def _ui_range(meta: dict, kind: type) -> tuple[float, float, float]:
    """(min, max, step) of a numeric control from the declared range: an open bound moves in
    by one step; an unbounded or huge one stops at the declaration's ``ui_max``."""
    step = meta["ui_step"] or (1 if kind is int else 0.01)
    lo = meta["lo"] if meta["lo"] is not None else -_UNBOUNDED_UI_MAX
    hi = meta["hi"] if meta["hi"] is not None else _UNBOUNDED_UI_MAX
    if meta["ui_max"] is not None:
        hi = min(hi, meta["ui_max"])
    lo = lo + step if meta["open_lo"] else lo
    hi = hi - step if meta["open_hi"] and hi == meta["hi"] else hi
    if kind is int:
        return int(lo), int(hi), int(step)
    return float(lo), float(hi), float(step)


class OptionControl:
    """The control of one declared option: a magicgui widget and its value (None = "auto").

    Parameters
    ----------
    f
        The dataclass field declared with :func:`~napari_moec.config.option`.
    annotation
        Its resolved type (``int``, ``int | None``, ``float``, ``str``, ``bool``).
    """

    def __init__(self, f, annotation) -> None:
        meta = f.metadata["option"]
        self.name = f.name
        kinds = [a for a in typing.get_args(annotation) if a is not type(None)]
        kind = kinds[0] if kinds else annotation
        self.nullable = f.default is None or (bool(kinds) and meta["auto"] is not None)
        self.label = label = meta["label"] or f.name.replace("_", " ").capitalize()
        self.tooltip = tooltip = meta["help"] + (f"; auto: {meta['auto']}" if meta["auto"] else "")
        options: dict[str, Any] = {}
        widget_type = None
        value = f.default
        choices = meta["choices"]
        if f.name in _AVAILABLE_CHOICES:
            choices = tuple(c for c in _AVAILABLE_CHOICES[f.name]() if c in choices)
        if choices is not None:
            options["choices"] = choices
        elif kind in (int, float):
            lo, hi, step = _ui_range(meta, kind)
            options.update(min=lo, max=hi, step=step)
            if kind is float and not (meta["open_lo"] or meta["open_hi"]) and hi - lo <= 1:
                widget_type = "FloatSlider"  # a fraction: a slider with its value shown
            if value is None:
                value = lo
        self.control = create_widget(
            value=value,
            annotation=kind,
            label=label,
            widget_type=widget_type,
            options=options,
        )
        if kind is float and widget_type is None:
            # One decimal more than the step has, so typed values finer than a step survive.
            decimals = max(2, math.ceil(-math.log10(options["step"])) + 1)
            self.control.native.setDecimals(decimals)
        self.control.tooltip = tooltip
        self.auto: CheckBox | None = None
        if self.nullable:
            self.auto = CheckBox(value=True, text="auto", tooltip=tooltip)
            self.auto.changed.connect(self._show_control)
            self.widget = Container(
                widgets=[self.auto, self.control], layout="horizontal", labels=False
            )
            self.widget.margins = (0, 0, 0, 0)
            self.widget.tooltip = tooltip
            self._show_control()
        else:
            self.widget = self.control

    def _show_control(self, *_) -> None:
        self.control.visible = not self.auto.value

    @property
    def value(self) -> Any:
        if self.auto is not None and self.auto.value:
            return None
        return self.control.value

    @value.setter
    def value(self, value: Any) -> None:
        if self.auto is not None:
            self.auto.value = value is None
        if value is not None:
            self.control.value = value

    def connect(self, callback) -> None:
        """Call ``callback()`` whenever the value changes."""
        self.control.changed.connect(callback)
        if self.auto is not None:
            self.auto.changed.connect(callback)


class SettingsPanel(QWidget):
    """Target ratio and every declared option with a ``ui`` place, advanced ones collapsed.

    Defaults come from the config dataclasses, so the widget and the library agree.
    ``changed`` fires on every edit (the widget debounces it to refresh the estimate).

    Attributes
    ----------
    controls : dict[str, OptionControl]
        The controls by option name.
    overrides : dict[str, Any]
        Options without a control set by :meth:`set_values` (e.g. ``report_every``).
    """

    changed = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.controls: dict[str, OptionControl] = {}
        self.overrides: dict[str, Any] = {}

        self.ratio = ComboBox(choices=[f"{r}x" for r in RATIO_PRESETS], value="256x")
        box: QComboBox = self.ratio.native
        box.setEditable(True)
        box.setInsertPolicy(QComboBox.InsertPolicy.NoInsert)
        box.setValidator(QRegularExpressionValidator(QRegularExpression(r"[0-9.]*\s*[xX×]?")))
        self.ratio.tooltip = "original bytes / file bytes; pick a preset or type any number"
        box.currentTextChanged.connect(self._emit_changed)
        #: "ratio" or "PSNR": what sets the file's size.
        self.target = ComboBox(choices=["ratio", "PSNR"], value="ratio")
        self.target.tooltip = (
            "ratio: the file's size; PSNR: the smallest file whose decoded PSNR over the data "
            "range reaches the target (grid model)"
        )
        self.psnr = FloatSpinBox(value=40.0, min=1.0, max=120.0, step=0.5)
        self.psnr.tooltip = "target PSNR in dB over the data range (grid model)"
        self.target.changed.connect(self._show_target)
        self.psnr.changed.connect(self._emit_changed)

        # Qt form layouts rather than magicgui Containers: a form aligns its labels, and the
        # ratio box sits in the same column as the generated controls.
        basic = QFormLayout()
        basic.addRow("Target", self.target.native)
        self._ratio_label, self._psnr_label = QLabel("Target ratio"), QLabel("Target PSNR (dB)")
        basic.addRow(self._ratio_label, box)
        basic.addRow(self._psnr_label, self.psnr.native)
        advanced_form = QWidget()
        advanced = QFormLayout(advanced_form)
        for cls in OPTION_CONFIGS.values():
            hints = typing.get_type_hints(cls)
            for f in option_fields(cls):
                place = f.metadata["option"]["ui"]
                if place is None:
                    continue
                control = OptionControl(f, hints[f.name])
                control.connect(self._emit_changed)
                self.controls[f.name] = control
                label = QLabel(control.label)
                label.setToolTip(control.tooltip)
                (basic if place == "basic" else advanced).addRow(label, control.widget.native)
        for name, value in WIDGET_DEFAULTS.items():
            self.controls[name].value = value
        self.advanced = QCollapsible("Advanced")
        self.advanced.addWidget(advanced_form)
        #: Big volumes: tiled compression on Dask (``widget_tiled_settings``).
        self.tiled = TiledSettings()
        self.tiled.changed.connect(self._emit_changed)
        self.big = QCollapsible("Big volumes (tiled, Dask)")
        self.big.addWidget(self.tiled)
        self.estimate = QLabel()
        self.estimate.setWordWrap(True)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(basic)
        layout.addWidget(self.advanced)
        layout.addWidget(self.big)
        layout.addWidget(self.estimate)
        self._show_target()

    def _show_target(self, *_) -> None:
        """Show the control of the chosen target only."""
        quality = self.target.value == "PSNR"
        for widget, shown in (
            (self._ratio_label, not quality),
            (self.ratio.native, not quality),
            (self._psnr_label, quality),
            (self.psnr.native, quality),
        ):
            widget.setVisible(shown)
        self.changed.emit()

    def _emit_changed(self, *_) -> None:
        self.changed.emit()

    def values(self) -> dict[str, Any]:
        """Every option set here, by name: the controls' values and the overrides."""
        return {name: c.value for name, c in self.controls.items()} | self.overrides

    def compressor_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for :class:`~napari_moec.training.Compressor`: ``ratio`` and one
        config per keyword of :data:`~napari_moec.config.OPTION_CONFIGS`.

        Raises
        ------
        ConfigError
            A value the core rejects, with the core's message.
        """
        if self.target.value == "PSNR":  # the ratio is then the ceiling of a quality target
            values = self.values() | {"target_psnr": float(self.psnr.value)}
            return {"ratio": PSNR_CAP_RATIO, **configs_from_options(values)}
        configs = configs_from_options(self.values() | {"target_psnr": None})
        return {"ratio": parse_ratio(self.ratio.native.currentText()), **configs}

    def set_values(self, **values: Any) -> None:
        """Set options by name (``ratio=64, steps=60, num_experts=None, tile=16, ...``; None =
        auto): for scripts, the demo and tests. Options without a control are kept as overrides;
        ``mode``, ``tile``, ``workers`` and ``scheduler`` are the big-volume settings."""
        declared = option_names()
        for name, value in values.items():
            if name == "ratio":
                self.ratio.native.setCurrentText(f"{value:g}x")
            elif name == "target_psnr":  # None: the ratio sets the size
                if value is not None:
                    self.psnr.value = value
                self.target.value = "ratio" if value is None else "PSNR"
            elif name in TiledSettings.NAMES:
                self.tiled.set_value(name, value)
            elif name in self.controls:
                self.controls[name].value = value
            elif name in declared:
                self.overrides[name] = value
                self.changed.emit()
            else:
                raise AttributeError(f"no setting named {name!r}")

    def show_estimate(self, text: str, error: bool = False) -> None:
        """Show the predicted size (or why the settings cannot work) under the settings."""
        self.estimate.setText(text)
        self.estimate.setStyleSheet("color: #e06c75;" if error else "")
