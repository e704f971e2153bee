"""How wide a MoE SIREN a byte budget buys, and how many experts: the SIREN family's sizing.

No voxel is read and no network is built: the sizes follow from the architecture (the payload
layout of :mod:`.codec`) and the measured coded bits per weight (``BITS_ESTIMATE``, from
trained networks: docs/format.md). The file-level policy (the budget of a ratio, the training
summary's bytes) is :mod:`napari_moec.plan`'s; this module answers "which network fits".
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace

from ...config import ArchConfig, ModelConfig, QuantConfig
from ...errors import ConfigError
from ...format import Header, fixed_overhead
from .codec import count_parameters, int_side_bytes

__all__ = [
    "BITS_ESTIMATE",
    "DEFAULT_EXPERTS",
    "MIN_EXPERT_WIDTH",
    "SINGLE_NETWORK_MAX_WIDTH",
    "SINGLE_NETWORK_WIDTH",
    "base_model",
    "first_layer_w0",
    "gate_width",
    "predict_payload_nbytes",
    "size_for_file",
    "size_model",
    "size_model_auto_experts",
    "tile_network",
    "widest_for_payload",
]

#: Coded bits per weight at the nominal step (entropy coding on), measured on trained networks.
BITS_ESTIMATE = {"int8": 7.2, "int6": 5.3, "int4": 3.4}
#: Largest width searched.
MAX_HIDDEN = 4096


def predict_payload_nbytes(model: ModelConfig, quant: QuantConfig) -> int:
    """Predicted payload (weights) size: exact for fp32/fp16, an estimate for coded integers."""
    params = count_parameters(model)
    if quant.is_float:
        return params * quant.bits // 8
    bits = BITS_ESTIMATE[quant.precision] if quant.entropy else math.log2(2**quant.bits - 1)
    # + 8: the ANS coder's 32-bit state and the final partial word.
    return int_side_bytes(model, quant) + math.ceil(params * bits / 8) + 8


def gate_width(hidden: int) -> int:
    """Router width for an expert width: half of it (the router is ~11% of the bytes)."""
    return max(2, hidden // 2)


def at_width(model: ModelConfig, hidden: int) -> ModelConfig:
    """``model`` with expert width ``hidden`` and the router width that goes with it."""
    return replace(model, hidden_features=hidden, gate_hidden=gate_width(hidden))


def widest(fits: Callable[[int], bool], max_hidden: int = MAX_HIDDEN) -> int | None:
    """The largest width in [1, max_hidden] for which ``fits`` holds (sizes grow with the
    width), or None when not even width 1 does: the one bisection of every sizing rule."""
    if not fits(1):
        return None
    lo, hi = 1, max_hidden
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    return lo


def widest_for_payload(
    model: ModelConfig, quant: QuantConfig, payload_budget: int, *, max_hidden: int = MAX_HIDDEN
) -> ModelConfig | None:
    """``model`` at the widest width whose predicted payload fits ``payload_budget`` bytes, or
    None when even width 1 does not (for containers other than a ``.moec`` file, e.g. tiles)."""
    hidden = widest(
        lambda h: predict_payload_nbytes(at_width(model, h), quant) <= payload_budget, max_hidden
    )
    return None if hidden is None else at_width(model, hidden)


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


def size_model(header: Header, budget: int, *, max_hidden: int = MAX_HIDDEN) -> ModelConfig:
    """The widest ``hidden_features`` (router width = hidden // 2) whose file fits ``budget``.

    ``header.model`` supplies everything else (experts, top-k, depth, w0). Raises ConfigError
    naming the smallest ratio that fits when even width 1 does not.
    """
    from ...plan import summary_for  # the file's policy; plan reaches this module lazily

    header = replace(header, train=summary_for(header, budget))

    def size(hidden: int) -> int:
        sized = replace(header, model=at_width(header.model, hidden))
        return fixed_overhead(sized) + predict_payload_nbytes(sized.model, sized.quant)

    hidden = widest(lambda h: size(h) <= budget, max_hidden)
    if hidden is None:
        smallest = size(1)
        raise ConfigError(
            f"no network fits {budget} bytes: the smallest needs {smallest} bytes, "
            f"so the highest possible ratio is {header.original_nbytes / smallest:.0f}x"
        )
    return at_width(header.model, hidden)


#: Experts of an automatically sized model where one network would be narrow, and the
#: narrowest expert worth a router.
DEFAULT_EXPERTS = 2
MIN_EXPERT_WIDTH = 4
#: Experts per voxel where the user leaves top-k to "auto": the paper's top-1 (top-2 measured
#: worse at equal bytes and time, docs/benchmarks.md).
DEFAULT_TOP_K = 1


def top_k_of(arch: ArchConfig) -> int:
    """The experts per voxel ``arch`` asks of SIREN networks, "auto" (None) resolved."""
    return DEFAULT_TOP_K if arch.top_k is None else arch.top_k


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


def base_model(arch: ArchConfig, ndim: int) -> ModelConfig:
    """The network ``arch`` asks for before sizing: its ``None`` fields at their start values
    (``DEFAULT_EXPERTS`` experts, first-layer ω0 30; the width is sized after)."""
    return ModelConfig(
        in_features=ndim,
        num_experts=DEFAULT_EXPERTS if arch.num_experts is None else arch.num_experts,
        top_k=top_k_of(arch),
        expert_layers=arch.expert_layers,
        w0=arch.w0,
        w0_first=30.0 if arch.w0_first is None else arch.w0_first,
    )


def size_for_file(header: Header, budget: int, arch: ArchConfig) -> ModelConfig:
    """The network of a ``budget``-byte file whose header (model aside) is ``header``: the
    width that fits (or ``arch``'s), the experts of the "auto" rule (or ``arch``'s), the
    first-layer ω0 of the width (or ``arch``'s)."""
    base = replace(header, model=base_model(arch, len(header.shape)))
    if arch.hidden_features is not None:
        model = at_width(base.model, arch.hidden_features)
    elif arch.num_experts is None:
        model = size_model_auto_experts(base, budget)
    else:
        model = size_model(base, budget)
    if arch.w0_first is None:
        model = replace(model, w0_first=first_layer_w0(model.hidden_features))
    return model


def tile_network(
    model_for: Callable[[int, int], ModelConfig],
    quant: QuantConfig,
    payload_budget: int,
    experts: int | None,
    default_experts: int = DEFAULT_EXPERTS,
) -> tuple[int, int] | None:
    """(hidden, experts) of the widest tile network within ``payload_budget`` bytes, or None.

    ``model_for(hidden, experts)`` is the tile spec's network rule. With ``experts`` None the
    tiles' own rule: ``min(2, default_experts)`` experts, or one network where each expert
    would be narrower than ``MIN_EXPERT_WIDTH``. This is *not* the single-volume "auto" rule:
    tiles never choose the one-network band (``SINGLE_NETWORK_WIDTH`` to
    ``SINGLE_NETWORK_MAX_WIDTH``), which was measured on whole volumes only; following it
    would change what tiled stores hold.
    """
    choices = [experts] if experts is not None else [min(DEFAULT_EXPERTS, default_experts), 1]
    for n in dict.fromkeys(choices):
        sized = widest_for_payload(model_for(1, n), quant, payload_budget)
        if sized is not None and (sized.hidden_features >= MIN_EXPERT_WIDTH or n == choices[-1]):
            return sized.hidden_features, n
    return None
