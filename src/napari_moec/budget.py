"""From a target ratio to a network: the byte budget and the widest model that fits it.

The budget is ``floor(original bytes / ratio)`` bytes of *file*, header and checksum included.
Parameters are sized for the precision they will be stored in, so an entropy-coded int8 network
is ~4x wider in parameters than an fp32 one at the same ratio. The estimate of coded bits per
weight (``BITS_ESTIMATE``) was measured on trained networks (docs/format.md); the rate
controller in ``api`` then picks the quantization step that fills the real budget exactly.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from .config import ModelConfig
from .errors import ConfigError
from .format import Header, fixed_overhead, int_side_bytes, parameter_shapes

__all__ = [
    "BITS_ESTIMATE",
    "budget_nbytes",
    "count_parameters",
    "first_layer_w0",
    "gate_width",
    "predict_nbytes",
    "size_model",
    "size_model_auto_experts",
    "summary_for",
    "summary_reserve",
]

#: Coded bits per weight at the nominal step (entropy coding on), measured on trained networks.
BITS_ESTIMATE = {"int8": 7.2, "int6": 5.3, "int4": 3.4}
#: Placeholder training summary whose JSON is as long as a real one, for sizing the header.
SUMMARY_PLACEHOLDER = {"device": "cuda", "psnr": 99.99, "seconds": 9999.9, "steps": 99999}
#: Largest share of the budget the optional training summary may take (it costs ~25 bytes).
SUMMARY_MAX_SHARE = 0.02


def summary_for(header: Header, budget: int) -> dict:
    """The training-summary placeholder to size with, or ``{}`` when the file cannot afford it.

    The summary (steps, seconds, device, PSNR) is ~25 header bytes: nothing at 64x, but at
    3000x of a 64³ volume (174 bytes) it would take a third of the weights' bytes. Files whose
    budget it would cost more than ``SUMMARY_MAX_SHARE`` of leave it out; the compressor's
    report still has every number.
    """
    cost = summary_reserve(header)
    return SUMMARY_PLACEHOLDER if cost <= SUMMARY_MAX_SHARE * budget else {}


def summary_reserve(header: Header) -> int:
    """Bytes the rate controller keeps free for the training summary: what the placeholder
    costs in this header, plus 4 bytes because DEFLATE codes other digits a little longer."""
    with_summary = fixed_overhead(replace(header, train=SUMMARY_PLACEHOLDER))
    return with_summary - fixed_overhead(replace(header, train={})) + 4


def budget_nbytes(original_nbytes: int, ratio: float) -> int:
    if not isinstance(ratio, int | float) or not math.isfinite(ratio) or ratio < 1:
        raise ConfigError(f"ratio must be a finite number >= 1, got {ratio!r}")
    return int(original_nbytes // ratio)


def count_parameters(model: ModelConfig) -> int:
    return sum(math.prod(shape) for _, shape in parameter_shapes(model))


def predict_nbytes(header: Header) -> int:
    """Predicted file size: exact for fp32/fp16, an estimate for coded integers."""
    params = count_parameters(header.model)
    quant = header.quant
    if quant.is_float:
        payload = params * quant.bits // 8
    else:
        bits = BITS_ESTIMATE[quant.precision] if quant.entropy else math.log2(2**quant.bits - 1)
        # + 8: the ANS coder's 32-bit state and the final partial word.
        payload = int_side_bytes(header.model, quant) + math.ceil(params * bits / 8) + 8
    return fixed_overhead(header) + payload


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
        original = math.prod(header.shape) * np.dtype(header.dtype).itemsize
        raise ConfigError(
            f"no network fits {budget} bytes: the smallest needs {smallest} bytes, "
            f"so the highest possible ratio is {original / smallest:.0f}x"
        )
    lo, hi = 1, max_hidden
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if size(mid) <= budget else (lo, mid - 1)
    return replace(header.model, hidden_features=lo, gate_hidden=gate_width(lo))


#: Experts of an automatically sized model, and the narrowest expert worth a router.
DEFAULT_EXPERTS = 2
MIN_EXPERT_WIDTH = 4


def size_model_auto_experts(header: Header, budget: int, **kwargs) -> ModelConfig:
    """:func:`size_model` with ``DEFAULT_EXPERTS`` experts, or fewer where the budget would
    make each expert narrower than ``MIN_EXPERT_WIDTH``.

    At 3000x of the 64³ HiP-CT block (174 bytes) two experts get width 2 (24.5 dB) and three
    width 1 (19.6 dB), while one expert with no router gets width 4: 26.8 dB. At 1024x (widths
    11, 7, 5) the three are within 0.2 dB, so experts are only dropped below width 4.
    """
    experts = DEFAULT_EXPERTS
    while True:
        model = replace(header.model, num_experts=experts, top_k=min(header.model.top_k, experts))
        try:
            sized = size_model(replace(header, model=model), budget, **kwargs)
        except ConfigError:
            if experts == 1:
                raise
            experts -= 1
            continue
        if sized.hidden_features >= MIN_EXPERT_WIDTH or experts == 1:
            return sized
        experts -= 1
