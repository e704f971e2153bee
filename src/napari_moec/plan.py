"""Planning: "what will this cost?" From a volume's shape and dtype and a target ratio to the
byte budget, the file header and the widest network that fits, without training.

:func:`plan` needs only shape, dtype and (optionally) the value range, so the napari widget can
show its size estimate on every keystroke without reading a voxel. The budget is
``floor(original bytes / ratio)`` bytes of *file*, header and checksum included. Parameters are
sized for the precision they will be stored in, so an entropy-coded int8 network is ~4x wider in
parameters than an fp32 one at the same ratio. The estimate of coded bits per weight
(``BITS_ESTIMATE``) was measured on trained networks (docs/format.md); after training the rate
controller (``rate``) picks the quantization that fills the real budget exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from .config import ArchConfig, ModelConfig, QuantConfig
from .errors import ConfigError
from .format import Header, TrainingSummary, count_parameters, fixed_overhead, int_side_bytes
from .volumes import check_axes, check_spacing, check_volume_shape

__all__ = [
    "BITS_ESTIMATE",
    "Plan",
    "budget_nbytes",
    "check_ratio",
    "first_layer_w0",
    "gate_width",
    "plan",
    "predict_nbytes",
    "predict_payload_nbytes",
    "size_model",
    "size_model_auto_experts",
    "summary_for",
    "summary_reserve",
    "widest_for_payload",
]

#: Coded bits per weight at the nominal step (entropy coding on), measured on trained networks.
BITS_ESTIMATE = {"int8": 7.2, "int6": 5.3, "int4": 3.4}
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


def predict_payload_nbytes(model: ModelConfig, quant: QuantConfig) -> int:
    """Predicted payload (weights) size: exact for fp32/fp16, an estimate for coded integers."""
    params = count_parameters(model)
    if quant.is_float:
        return params * quant.bits // 8
    bits = BITS_ESTIMATE[quant.precision] if quant.entropy else math.log2(2**quant.bits - 1)
    # + 8: the ANS coder's 32-bit state and the final partial word.
    return int_side_bytes(model, quant) + math.ceil(params * bits / 8) + 8


def predict_nbytes(header: Header) -> int:
    """Predicted file size: exact for fp32/fp16, an estimate for coded integers."""
    return fixed_overhead(header) + predict_payload_nbytes(header.model, header.quant)


def widest_for_payload(
    model: ModelConfig, quant: QuantConfig, payload_budget: int, *, max_hidden: int = 4096
) -> ModelConfig | None:
    """``model`` at the widest width whose predicted payload fits ``payload_budget`` bytes, or
    None when even width 1 does not (for containers other than a ``.moec`` file, e.g. tiles)."""

    def size(hidden: int) -> int:
        wider = replace(model, hidden_features=hidden, gate_hidden=gate_width(hidden))
        return predict_payload_nbytes(wider, quant)

    if size(1) > payload_budget:
        return None
    lo, hi = 1, max_hidden
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if size(mid) <= payload_budget else (lo, mid - 1)
    return replace(model, hidden_features=lo, gate_hidden=gate_width(lo))


#: First-layer ω0 per unit of network width, and its bounds (measured: docs/benchmarks/notes.md).
W0_PER_WIDTH = 0.75
W0_FIRST_MIN = 5.0
W0_FIRST_MAX = 30.0


def first_layer_w0(hidden: int) -> float:
    """The first sine layer's frequency factor for a network of width ``hidden``.

    ω0 = 30 (SIREN's and the paper's value) makes the first layer's sines span several periods
    of the volume. A wide network combines them into any detail; a narrow one (the extreme
    ratios) cannot, and fits noise-like ripples instead: on the 64³ HiP-CT block at 1024x
    (width 7) ω0 = 5 gave 28.8 dB against 24.1 dB at ω0 = 30, at 3000x (width 2) 24.5 against
    20.5 dB (docs/benchmarks.md, ablations). The measured best grows with the width, so
    ω0 = 0.75·width within [5, 30] (an integer, so the header stays short). Hidden layers keep
    ω0 = 30.
    """
    w0 = min(W0_FIRST_MAX, max(W0_FIRST_MIN, W0_PER_WIDTH * hidden))
    return float(round(w0))


def gate_width(hidden: int) -> int:
    """Router width for an expert width: half of it (the router is ~11% of the bytes)."""
    return max(2, hidden // 2)


def size_model(header: Header, budget: int, *, max_hidden: int = 4096) -> ModelConfig:
    """The widest ``hidden_features`` (router width = hidden // 2) whose file fits ``budget``.

    ``header.model`` supplies everything else (experts, top-k, depth, w0). Raises ConfigError
    naming the smallest ratio that fits when even width 1 does not.
    """
    header = replace(header, train=summary_for(header, budget))

    def size(hidden: int) -> int:
        model = replace(header.model, hidden_features=hidden, gate_hidden=gate_width(hidden))
        return predict_nbytes(replace(header, model=model))

    smallest = size(1)
    if smallest > budget:
        original = header.original_nbytes
        raise ConfigError(
            f"no network fits {budget} bytes: the smallest needs {smallest} bytes, "
            f"so the highest possible ratio is {original / smallest:.0f}x"
        )
    lo, hi = 1, max_hidden
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if size(mid) <= budget else (lo, mid - 1)
    return replace(header.model, hidden_features=lo, gate_hidden=gate_width(lo))


#: Experts of an automatically sized model where one network would be narrow, and the
#: narrowest expert worth a router.
DEFAULT_EXPERTS = 2
MIN_EXPERT_WIDTH = 4
#: "auto" stores one network without a router where it would be at least
#: ``SINGLE_NETWORK_WIDTH`` and at most ``SINGLE_NETWORK_MAX_WIDTH`` wide. Measured at equal
#: bytes in 5-minute CPU runs (issue 10, docs/benchmarks/notes.md): one network of width 25-64
#: beat two experts on every volume (+0.3 to +3.3 dB: no router, more steps per second, each voxel
#: sees the whole width); two experts won where one network would be narrow (the 4D MRI at
#: width 14: +1.3 dB) and where it would be wide (HiP-CT 16x, width 108: +0.9 dB; the
#: macaque at 256x, width 158: +0.7 dB): there two experts of width 72-105 halve the matmuls
#: a point costs and make 1.2-1.3x the steps of one network. The bound 80 lies between 64 and 108.
SINGLE_NETWORK_WIDTH = 20
SINGLE_NETWORK_MAX_WIDTH = 80


def size_model_auto_experts(header: Header, budget: int, **kwargs) -> ModelConfig:
    """:func:`size_model` with the number of experts chosen too: one network without a router
    where it would be ``SINGLE_NETWORK_WIDTH`` to ``SINGLE_NETWORK_MAX_WIDTH`` wide; else
    ``DEFAULT_EXPERTS``, or fewer where the budget would make each expert narrower than
    ``MIN_EXPERT_WIDTH``.

    At 3000x of the 64³ HiP-CT block (174 bytes) two experts get width 2 (24.5 dB) and three
    width 1 (19.6 dB), while one expert with no router gets width 4: 26.8 dB. At 1024x (widths
    11, 7, 5) the three are within 0.2 dB, so experts are only dropped below width 4.
    """
    one = replace(header.model, num_experts=1, top_k=1)
    try:
        single = size_model(replace(header, model=one), budget, **kwargs)
    except ConfigError as exc:
        single, too_small = None, exc  # nothing fits; more experts need more bytes still
    if single is not None and (
        SINGLE_NETWORK_WIDTH <= single.hidden_features <= SINGLE_NETWORK_MAX_WIDTH
    ):
        return single
    for experts in range(DEFAULT_EXPERTS, 1, -1):
        model = replace(header.model, num_experts=experts, top_k=min(header.model.top_k, experts))
        try:
            sized = size_model(replace(header, model=model), budget, **kwargs)
        except ConfigError:
            continue
        if sized.hidden_features >= MIN_EXPERT_WIDTH:
            return sized
    if single is None:
        raise too_small
    return single


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
    """

    header: Header
    budget: int
    stores_summary: bool
    predicted_nbytes: int

    @property
    def model(self) -> ModelConfig:
        return self.header.model

    @property
    def num_parameters(self) -> int:
        return count_parameters(self.header.model)


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
    arch: ArchConfig | None = None,
    quant: QuantConfig | None = None,
    axes: str | None = None,
    spacing=None,
    unit: str | None = None,
    value_range: tuple[float, float] | None = None,
    norm_range: tuple[float, float] = (-1.0, 1.0),
) -> Plan:
    """Check the settings and size the network for a volume of ``shape`` and ``dtype``.

    Reads no voxel. ``value_range`` is the volume's (min, max); when None (a size estimate before
    the data is scanned) a placeholder of the dtype's range is used, which can move the header,
    and with it the sized width, by a few bytes.

    Raises
    ------
    ConfigError
        Naming the first problem: dtype, dimensionality, axes, spacing, ratio, or a budget so
        small that no network fits (with the highest possible ratio).
    """
    dtype = np.dtype(dtype)
    shape = tuple(int(n) for n in shape)
    check_volume_shape(shape, dtype)
    arch = arch or ArchConfig()
    quant = quant or QuantConfig()
    vmin, vmax = value_range if value_range is not None else _RANGE_PLACEHOLDER[dtype.name]
    base = Header(
        shape=shape,
        axes=check_axes(axes, len(shape)),
        dtype=dtype.name,
        vmin=float(vmin),
        vmax=float(vmax),
        model=ModelConfig(
            in_features=len(shape),
            num_experts=DEFAULT_EXPERTS if arch.num_experts is None else arch.num_experts,
            top_k=arch.top_k,
            expert_layers=arch.expert_layers,
            w0=arch.w0,
            w0_first=30.0 if arch.w0_first is None else arch.w0_first,
        ),
        quant=quant,
        norm=(float(norm_range[0]), float(norm_range[1])),
        spacing=check_spacing(spacing, len(shape)),
        unit=unit,
    )
    budget = budget_nbytes(base.original_nbytes, ratio)
    if arch.hidden_features is not None:
        hidden = arch.hidden_features
        model = replace(base.model, hidden_features=hidden, gate_hidden=gate_width(hidden))
    elif arch.num_experts is None:
        model = size_model_auto_experts(base, budget)
    else:
        model = size_model(base, budget)
    if arch.w0_first is None:
        model = replace(model, w0_first=first_layer_w0(model.hidden_features))
    header = replace(base, model=model)
    summary = summary_for(header, budget)
    predicted = predict_nbytes(replace(header, train=summary))
    if quant.is_float and predicted > budget:
        raise ConfigError(
            f"a width-{model.hidden_features} network needs {predicted} bytes, "
            f"over the {budget}-byte budget"
        )
    return Plan(header, budget, summary is not None, predicted)
