"""Symmetric uniform weight quantization, shared by quantization-aware training and the file.

A tensor is stored as integers ``q`` and a float16 scale (one per tensor, or one per output
channel): ``w ~ q * scale``. The nominal scale is ``max|w| / (2^(bits-1) - 1)``; the rate
controller multiplies it by ``step`` (> 1 coarser, < 1 finer than the nominal ``bits``) to fill
the byte budget exactly. Scales are rounded to float16 *before* use so training, writing and
reading all see the same numbers.
"""

from __future__ import annotations

import torch

__all__ = ["MAX_LEVEL", "dequantize", "fake_quantize", "quantize"]

#: Largest integer magnitude the entropy coder accepts (symbols fit in int16).
MAX_LEVEL = 32767


def _scale(weight: torch.Tensor, bits: int, per_channel: bool, step: float) -> torch.Tensor:
    # Per channel = per output feature: dim 1 is the input dim of both nn.Linear weights
    # (out, in) and batched expert weights (n, in, out).
    if per_channel and weight.ndim >= 2:
        maxabs = weight.detach().abs().amax(dim=1, keepdim=True)
    else:
        maxabs = weight.detach().abs().amax().reshape([1] * weight.ndim)
    scale = maxabs / (2 ** (bits - 1) - 1) * step
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    scale = scale.to(torch.float16).to(torch.float32)
    # float16 underflow/rounding must never give a zero or non-finite scale.
    tiny = torch.finfo(torch.float16).tiny
    return torch.clamp(scale, min=tiny, max=float(torch.finfo(torch.float16).max))


def quantize(
    weight: torch.Tensor, bits: int, per_channel: bool, step: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return integers (int32, same shape) and float32 scales (float16-exact, broadcastable)."""
    scale = _scale(weight, bits, per_channel, step)
    q = torch.clamp(torch.round(weight.detach() / scale), -MAX_LEVEL, MAX_LEVEL)
    return q.to(torch.int32), scale


def dequantize(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return q.to(torch.float32) * scale


def fake_quantize(weight: torch.Tensor, bits: int, per_channel: bool) -> torch.Tensor:
    """Quantize-dequantize in the forward pass with a straight-through gradient, so the last
    training steps adapt the weights to the grid they will be stored on (QAT)."""
    q, scale = quantize(weight, bits, per_channel)
    return weight + (dequantize(q, scale) - weight).detach()
