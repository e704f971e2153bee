"""Planning: "what will this cost?" From a volume's shape and dtype and a target ratio to the
byte budget, the file header and the model that fits, without training: the one budget policy.

The policy lives here once: the budget of a ratio (:func:`budget_nbytes`, the only
``nbytes // ratio``), whether the training summary is stored (:func:`summary_for`), and the
bytes the payload may take (:func:`payload_budget`), all carried by :class:`Plan` so nothing
downstream recomputes them. *Which* model fits is the family's answer
(:meth:`~napari_moec.families.base.ModelFamily.size`; SIREN's in
:mod:`napari_moec.families.siren.sizing`); tiled stores share their budget in
:mod:`napari_moec.tiled.allocate` with the same budget rule and the family's sizing.

:func:`plan` needs only shape, dtype and (optionally) the value range, so the napari widget can
show its size estimate on every keystroke without reading a voxel. The budget is
``floor(original bytes / ratio)`` bytes of *file*, header and checksum included. Parameters are
sized for the precision they will be stored in, so an entropy-coded int8 network is ~4x wider in
parameters than an fp32 one at the same ratio. The estimate of coded bits per weight
(``families.siren.sizing.BITS_ESTIMATE``) was measured on trained networks (docs/format.md);
after training the rate controller (``rate``) picks the quantization that fills the real budget
exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from . import families
from .config import ArchConfig, ModelConfig, QuantConfig
from .errors import ConfigError
from .families.base import SizeRequest
from .format import Header, TrainingSummary, fixed_overhead
from .volumes import check_axes, check_spacing, check_volume_shape

__all__ = [
    "SUMMARY_PLACEHOLDER",
    "Plan",
    "budget_nbytes",
    "check_ratio",
    "payload_budget",
    "plan",
    "predict_nbytes",
    "summary_for",
    "summary_reserve",
]

#: Placeholder training summary whose JSON is as long as a real one, for sizing the header.
SUMMARY_PLACEHOLDER = TrainingSummary(steps=99999, psnr=99.99, seconds=9999.9, device="cuda")
#: Largest share of the budget the optional training summary may take (it costs ~25 bytes).
SUMMARY_MAX_SHARE = 0.02


def summary_for(header: Header, budget: int) -> TrainingSummary | None:
    """The training-summary placeholder to size with, or None when the file cannot afford it.

    The summary (steps, seconds, device, PSNR) is ~25 header bytes: nothing at 64x, but at
    3000x of a 64³ volume (174 bytes) it would take a third of the weights' bytes. Files whose
    budget it would cost more than ``SUMMARY_MAX_SHARE`` of leave it out; the compressor's
    report still has every number.
    """
    cost = summary_reserve(header)
    return SUMMARY_PLACEHOLDER if cost <= SUMMARY_MAX_SHARE * budget else None


def summary_reserve(header: Header) -> int:
    """Bytes the rate controller keeps free for the training summary: what the placeholder
    costs in this header, plus 4 bytes because DEFLATE codes other digits a little longer."""
    with_summary = fixed_overhead(replace(header, train=SUMMARY_PLACEHOLDER))
    return with_summary - fixed_overhead(replace(header, train=None)) + 4


def check_ratio(ratio: object) -> float:
    """The one rule for ratios: a finite number >= 1 (``original bytes / file bytes``)."""
    if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not math.isfinite(ratio):
        raise ConfigError(f"ratio must be a finite number >= 1, got {ratio!r}")
    if ratio < 1:
        raise ConfigError(f"ratio must be >= 1 (original bytes / file bytes), got {ratio:g}")
    return float(ratio)


def budget_nbytes(original_nbytes: int, ratio: float) -> int:
    """The byte budget of a whole file: ``floor(original bytes / ratio)``."""
    return int(original_nbytes // check_ratio(ratio))


def predict_nbytes(header: Header) -> int:
    """Predicted file size: exact for fp32/fp16, an estimate for coded integers."""
    predicted = families.get(header.family).predict_payload_nbytes(header.model, header.quant)
    return fixed_overhead(header) + predicted


def payload_budget(header: Header, budget: int, stores_summary: bool) -> int:
    """Bytes the payload of a ``budget``-byte file whose header (without summary) is ``header``
    may take: the budget less the header and the bytes reserved for the training summary
    (float payloads cannot shrink, so they get the summary's too; their summary is written
    only where it fits, see :func:`~napari_moec.rate.frame_with_summary`)."""
    reserve = summary_reserve(header) if stores_summary and not header.quant.is_float else 0
    return budget - reserve - fixed_overhead(header)


@dataclass(frozen=True)
class Plan:
    """What a compression will store and cost, decided before any training.

    Attributes
    ----------
    header
        The file's header without the training summary: shape, dtype, range, the sized network.
    budget
        Bytes the whole file may take.
    stores_summary
        Whether the file will hold the training summary (not in the tightest budgets).
    predicted_nbytes
        Predicted file size (exact for fp32/fp16, an estimate for coded integers).
    payload_budget
        Bytes the stored payload may take (:func:`payload_budget`): what the family's rate
        control fills. Decided here, once, with the summary.
    """

    header: Header
    budget: int
    stores_summary: bool
    predicted_nbytes: int
    payload_budget: int

    @property
    def model(self) -> ModelConfig:
        return self.header.model

    @property
    def family(self) -> str:
        return self.header.family

    @property
    def num_parameters(self) -> int:
        return families.codec(self.header.family).count_parameters(self.header.model)


#: Stand-in value ranges for the header when the real one is not known yet (estimates only).
_RANGE_PLACEHOLDER = {
    "uint8": (0.0, 255.0),
    "uint16": (0.0, 65535.0),
    "int16": (-32768.0, 32767.0),
    "float32": (0.0, 1000.0),
}


def plan(
    shape: tuple[int, ...],
    dtype,
    ratio: float,
    *,
    arch: ArchConfig | object | None = None,
    quant: QuantConfig | None = None,
    axes: str | None = None,
    spacing=None,
    unit: str | None = None,
    value_range: tuple[float, float] | None = None,
    norm_range: tuple[float, float] = (-1.0, 1.0),
    family: str | None = None,
    quality_target: bool = False,
) -> Plan:
    """Check the settings and size the network for a volume of ``shape`` and ``dtype``: the
    one sizing and budget policy of single volumes (the CLI, ``api.compress``, both widget
    paths' estimates and :class:`~napari_moec.training.Compressor` call it).

    ``arch`` is the family's options (:class:`ArchConfig` for ``family`` "siren", the
    default); the family sizes the model (:meth:`~napari_moec.families.base.ModelFamily.size`).

    Reads no voxel. ``value_range`` is the volume's (min, max); when None (a size estimate before
    the data is scanned) a placeholder of the dtype's range is used, which can move the header,
    and with it the sized width, by a few bytes. ``quality_target``: a PSNR target sizes the
    run and ``ratio`` is only its byte ceiling (``SizeRequest.quality_target``).

    Raises
    ------
    ConfigError
        Naming the first problem: dtype, dimensionality, axes, spacing, ratio, or a budget so
        small that no network fits (with the highest possible ratio).
    """
    dtype = np.dtype(dtype)
    shape = tuple(int(n) for n in shape)
    check_volume_shape(shape, dtype)
    quant = quant or QuantConfig()
    vmin, vmax = value_range if value_range is not None else _RANGE_PLACEHOLDER[dtype.name]
    if family is None:  # the user's choice is an option of the architecture (declared once)
        family = arch.model if isinstance(arch, ArchConfig) else families.DEFAULT
    family = families.get(family)
    template = Header(
        shape=shape,
        axes=check_axes(axes, len(shape)),
        dtype=dtype.name,
        vmin=float(vmin),
        vmax=float(vmax),
        model=None,
        quant=quant,
        norm=(float(norm_range[0]), float(norm_range[1])),
        spacing=check_spacing(spacing, len(shape)),
        unit=unit,
        family=family.name,
    )
    budget = budget_nbytes(template.original_nbytes, ratio)
    options = family.default_options() if arch is None else arch
    model = family.size(SizeRequest(template, budget, options, quality_target))
    header = replace(template, model=model)
    summary = summary_for(header, budget)
    predicted = predict_nbytes(replace(header, train=summary))
    if quant.is_float and predicted > budget:
        raise ConfigError(
            f"a width-{model.hidden_features} network needs {predicted} bytes, "
            f"over the {budget}-byte budget"
        )
    stores = summary is not None
    return Plan(header, budget, stores, predicted, payload_budget(header, budget, stores))
