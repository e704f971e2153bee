"""Rate control: store trained weights at the finest quantization that fits the byte budget.

The ratio is a promise: ``original bytes / file bytes >= ratio``. After training, the weights of
an ``intN`` file are quantized with a scale multiplier found by bisection: the smallest (finest)
multiplier whose payload fits the bytes left after the header. Float precisions have nothing
to choose: their size was exact when the network was sized.

The optional training summary (steps, seconds, device, PSNR) goes into bytes reserved for it
up front (:func:`~napari_moec.plan.summary_reserve`), never into the search: the stored weights
then never depend on the summary's contents (wall-clock seconds), so the same seed gives the
same weights on every run.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import replace

import torch

from .config import ModelConfig, QuantConfig
from .errors import TrainingError
from .families.base import Fit
from .format import Header, TrainingSummary, frame, layout_group, pack_payload

__all__ = [
    "EXTRA_BITS",
    "MULTIPLIER_RANGE",
    "REFINED_GROUPS",
    "Fit",
    "fit_payload",
    "frame_with_summary",
]

#: log2 bounds of the quantization-scale multiplier searched (1 = nominal N-bit levels).
MULTIPLIER_RANGE = (-4.0, 16.0)
#: Bisection steps: the multiplier is found to within 2^(20 / 2^22) (~3e-6 relative).
_BISECTIONS = 22
#: Bisection steps of a per-group candidate, in a bracket of at most 3.75 (log2): to within
#: ~0.13% of the scale, a few bytes of the budget. Each step packs the payload once, and a
#: finer group raises the symbol radius, whose entropy-model tables are then built anew.
_CANDIDATE_BISECTIONS = 11
#: Layout groups whose precision is chosen apart from the rest, in this order, and the extra
#: bits tried for each. The encoder's weights are multiplied by the first layer's ω0 (5-30)
#: and its rounding error reaches every voxel through every expert; the router's decides
#: which expert decodes a voxel, and a rounding that flips a voxel's argmax hands it to an
#: expert that never trained on it (mri4d 64x, two experts: 2.8% of the voxels changed expert
#: between the float network and its file, which lost 0.34 dB). Both are small (~5-15% of
#: the parameters), so a finer grid there costs the rest little. Measured in 5-minute runs
#: (docs/benchmarks/notes.md): the encoder got 2-3 more bits in every file where it helped,
#: +0.22 to +0.57 dB at equal bytes.
REFINED_GROUPS = ("encoder", "gate")
EXTRA_BITS = (1, 2, 3)


def fit_payload(
    model: ModelConfig,
    quant: QuantConfig,
    state: dict[str, torch.Tensor],
    budget: int,
    *,
    distortion: Callable[[bytes], float] | None = None,
) -> Fit:
    """The payload of ``state`` at the finest quantization within ``budget`` bytes.

    With ``distortion`` (payload -> error of the network it holds, e.g. the MSE on a fixed
    set of voxels), the precision of each group of :data:`REFINED_GROUPS` is chosen too: for
    each group in turn, every count of :data:`EXTRA_BITS` is fitted to the same budget (the
    other tensors get a coarser grid to pay for it) and kept when its distortion is lower.
    The uniform grid is one of the candidates, so the result is never worse on that measure
    and never larger. Without ``distortion`` every tensor shares one multiplier.

    Raises
    ------
    TrainingError
        When even the coarsest quantization (or the float payload) exceeds ``budget``.
    """
    if quant.is_float:
        payload = pack_payload(model, quant, state)
        if len(payload) > budget:
            raise TrainingError(f"weights of {len(payload)} bytes exceed the {budget}-byte budget")
        return Fit(payload, 1.0, {})
    best = _fit_multiplier(model, quant, state, budget, {}, MULTIPLIER_RANGE, _BISECTIONS)
    if distortion is None:
        return best
    best_error = distortion(best.payload)
    groups = {layout_group(name) for name in state}
    for group in (g for g in REFINED_GROUPS if g in groups):
        chosen = best.extra_bits
        base = math.log2(best.multiplier)
        for bits in EXTRA_BITS:
            # Finer here, coarser elsewhere: the multiplier rises by less than ``bits`` (all
            # of it only if the group were the whole payload), so a short bracket suffices.
            bracket = (base - 0.25, base + bits + 0.5)
            try:
                trial = _fit_multiplier(model, quant, state, budget, {**chosen, group: bits},
                                     bracket, _CANDIDATE_BISECTIONS)  # fmt: skip
            except TrainingError:
                continue
            error = distortion(trial.payload)
            if error < best_error:
                best, best_error = trial, error
    return best


def _fit_multiplier(
    model: ModelConfig,
    quant: QuantConfig,
    state: dict[str, torch.Tensor],
    budget: int,
    extra_bits: Mapping[str, int],
    bracket: tuple[float, float],
    bisections: int,
) -> Fit:
    """The finest multiplier within ``bracket`` (log2) whose payload fits, by bisection, with
    ``extra_bits`` fixed."""
    extra = dict(extra_bits)
    lo, hi = bracket
    payload = pack_payload(model, quant, state, 2.0**lo, extra)
    if len(payload) <= budget:
        return Fit(payload, 2.0**lo, extra)
    best = None
    for _ in range(bisections):
        mid = (lo + hi) / 2
        candidate = pack_payload(model, quant, state, 2.0**mid, extra)
        if len(candidate) <= budget:
            hi, best = mid, candidate
        else:
            lo = mid
    if best is None:
        best = pack_payload(model, quant, state, 2.0**hi, extra)
        if len(best) > budget:
            raise TrainingError(
                f"even the coarsest quantization gives {len(best)} bytes > {budget}"
            )
    return Fit(best, 2.0**hi, extra)


def frame_with_summary(
    header: Header, payload: bytes, summary: TrainingSummary | None, budget: int
) -> tuple[bytes, Header]:
    """The file around ``payload`` and the header it holds: ``header`` with ``summary``, or
    without it where it does not fit. The plan decided whether a summary is stored and
    reserved its bytes in integer payloads (:attr:`~napari_moec.plan.Plan.payload_budget`);
    float payloads have no reserve (they cannot shrink), so for them this is where the
    summary is dropped when the weights leave too little room. For integer payloads the check
    is a guard: DEFLATE may code a real summary a few bytes longer than the placeholder."""
    if summary is not None:
        with_summary = replace(header, train=summary)
        data = frame(with_summary, payload)
        if len(data) <= budget:
            return data, with_summary
    data = frame(header, payload)
    if len(data) > budget:
        raise TrainingError(f"file of {len(data)} bytes exceeds the {budget}-byte budget")
    return data, header
