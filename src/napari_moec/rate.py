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

from dataclasses import replace

import torch

from .config import ModelConfig, QuantConfig
from .errors import TrainingError
from .format import Header, TrainingSummary, fixed_overhead, frame, pack_payload

__all__ = ["MULTIPLIER_RANGE", "fit_payload", "frame_with_summary", "payload_budget"]

#: log2 bounds of the quantization-scale multiplier searched (1 = nominal N-bit levels).
MULTIPLIER_RANGE = (-4.0, 16.0)
#: Bisection steps: the multiplier is found to within 2^(20 / 2^22) (~3e-6 relative).
_BISECTIONS = 22


def fit_payload(
    model: ModelConfig, quant: QuantConfig, state: dict[str, torch.Tensor], budget: int
) -> tuple[bytes, float]:
    """The payload of ``state`` at the finest quantization within ``budget`` bytes, and the
    scale multiplier used (1.0 for float precisions).

    Raises
    ------
    TrainingError
        When even the coarsest quantization (or the float payload) exceeds ``budget``.
    """
    if quant.is_float:
        payload = pack_payload(model, quant, state)
        if len(payload) > budget:
            raise TrainingError(f"weights of {len(payload)} bytes exceed the {budget}-byte budget")
        return payload, 1.0
    lo, hi = MULTIPLIER_RANGE
    payload = pack_payload(model, quant, state, 2.0**lo)
    if len(payload) <= budget:
        return payload, 2.0**lo
    best = None
    for _ in range(_BISECTIONS):
        mid = (lo + hi) / 2
        candidate = pack_payload(model, quant, state, 2.0**mid)
        if len(candidate) <= budget:
            hi, best = mid, candidate
        else:
            lo = mid
    if best is None:
        best = pack_payload(model, quant, state, 2.0**hi)
        if len(best) > budget:
            raise TrainingError(
                f"even the coarsest quantization gives {len(best)} bytes > {budget}"
            )
    return best, 2.0**hi


def payload_budget(header: Header, budget: int, reserve: int) -> int:
    """Bytes left for the payload in a ``budget``-byte file whose header (without summary) is
    ``header``, keeping ``reserve`` bytes for the training summary."""
    return budget - reserve - fixed_overhead(header)


def frame_with_summary(
    header: Header, payload: bytes, summary: TrainingSummary | None, budget: int
) -> tuple[bytes, Header]:
    """The file around ``payload`` and the header it holds: ``header`` with ``summary``, or
    without the summary in the rare case that it does not fit the bytes reserved for it."""
    if summary is not None:
        with_summary = replace(header, train=summary)
        data = frame(with_summary, payload)
        if len(data) <= budget:
            return data, with_summary
    data = frame(header, payload)
    if len(data) > budget:
        raise TrainingError(f"file of {len(data)} bytes exceeds the {budget}-byte budget")
    return data, header
