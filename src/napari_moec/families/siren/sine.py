"""SIREN layers (Sitzmann et al., "Implicit Neural Representations with Periodic Activation
Functions", NeurIPS 2020) and a batched bank of SIREN experts.

The experts keep their weights stacked as ``(num_experts, in, out)`` so that one
``torch.baddbmm`` per layer runs every expert at once on its dispatched points, the layout
Tutel's ``experts/ffn.py`` uses; there is no Python loop over experts.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["BatchedSineExperts", "SineLayer", "sine_init_first_", "sine_init_hidden_"]


def sine_init_first_(weight: torch.Tensor, in_features: int) -> None:
    """First-layer init U(-1/in, 1/in): with ``w0_first`` it spans several periods (§3.2)."""
    with torch.no_grad():
        weight.uniform_(-1.0 / in_features, 1.0 / in_features)


def sine_init_hidden_(weight: torch.Tensor, in_features: int, w0: float) -> None:
    """Hidden-layer init U(-sqrt(6/in)/w0, sqrt(6/in)/w0), which keeps the pre-activations of
    ``sin(w0 * x)`` distributed like a unit arcsine at every depth (SIREN §3.2, Thm. 1.8)."""
    bound = math.sqrt(6.0 / in_features) / w0
    with torch.no_grad():
        weight.uniform_(-bound, bound)


def _bias_init_(bias: torch.Tensor, in_features: int) -> None:
    # nn.Linear's default bias init, which the SIREN reference code keeps.
    bound = 1.0 / math.sqrt(in_features)
    with torch.no_grad():
        bias.uniform_(-bound, bound)


class _SineAddmm(torch.autograd.Function):
    """``sin(w0 (x W^T + b))`` for an nn.Linear weight ``W`` (out, in), with a lean backward.

    Autograd would keep ``z`` and allocate fresh batch-sized tensors for ``cos(z)`` and for
    ``grad * cos(z)``; here the saved pre-activation ``z`` (needed for nothing else) becomes
    ``cos(z) * grad`` in place. Same function, fewer batch-sized allocations per step.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, w0: float):
        scaled = weight * w0
        z = torch.addmm(bias * w0, x, scaled.t())
        ctx.save_for_backward(x, scaled, z)
        ctx.w0 = w0
        return torch.sin(z)

    @staticmethod
    def backward(ctx, grad):
        x, scaled, z = ctx.saved_tensors
        gz = z.cos_().mul_(grad)
        gx = gz @ scaled if ctx.needs_input_grad[0] else None
        gw = (gz.t() @ x).mul_(ctx.w0)
        gb = gz.sum(0).mul_(ctx.w0)
        return gx, gw, gb, None


class _SineBaddbmm(torch.autograd.Function):
    """``sin(w0 (x W + b))`` for stacked expert weights ``W`` (n, in, out), ``b`` (n, 1, out)
    and dispatched points ``x`` (n, C, in): :class:`_SineAddmm` for the batched experts."""

    @staticmethod
    def forward(ctx, x, weight, bias, w0: float):
        scaled = weight * w0
        z = torch.baddbmm(bias * w0, x, scaled)
        ctx.save_for_backward(x, scaled, z)
        ctx.w0 = w0
        return torch.sin(z)

    @staticmethod
    def backward(ctx, grad):
        x, scaled, z = ctx.saved_tensors
        gz = z.cos_().mul_(grad)
        gx = torch.bmm(gz, scaled.transpose(1, 2)) if ctx.needs_input_grad[0] else None
        gw = torch.bmm(x.transpose(1, 2), gz).mul_(ctx.w0)
        gb = gz.sum(1, keepdim=True).mul_(ctx.w0)
        return gx, gw, gb, None


class SineLayer(nn.Module):
    """``sin(w0 * (x @ W + b))``, initialised as a first or hidden SIREN layer."""

    def __init__(self, in_features: int, out_features: int, w0: float, *, is_first: bool) -> None:
        super().__init__()
        self.w0 = float(w0)
        self.linear = nn.Linear(in_features, out_features)
        if is_first:
            sine_init_first_(self.linear.weight, in_features)
        else:
            sine_init_hidden_(self.linear.weight, in_features, w0)
        _bias_init_(self.linear.bias, in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # w0 scales the (small) weights rather than the (batch-sized) pre-activations: the
        # same function with half the elementwise work, forward and backward.
        w0 = self.w0
        if torch.is_grad_enabled():
            return _SineAddmm.apply(x, self.linear.weight, self.linear.bias, w0)
        return torch.addmm(self.linear.bias * w0, x, self.linear.weight.t() * w0).sin_()


class BatchedSineExperts(nn.Module):
    """``num_experts`` independent SIREN MLPs of ``num_layers`` hidden sine layers each.

    ``weight_l`` has shape ``(num_experts, features, features)`` and ``bias_l``
    ``(num_experts, 1, features)``; :meth:`forward` takes points already dispatched per expert,
    shape ``(num_experts, capacity, features)``.
    """

    def __init__(self, num_experts: int, features: int, num_layers: int, w0: float) -> None:
        super().__init__()
        self.w0 = float(w0)
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for _ in range(num_layers):
            weight = nn.Parameter(torch.empty(num_experts, features, features))
            bias = nn.Parameter(torch.empty(num_experts, 1, features))
            sine_init_hidden_(weight, features, w0)
            _bias_init_(bias, features)
            self.weights.append(weight)
            self.biases.append(bias)

    def run_one(self, expert: int, x: torch.Tensor) -> torch.Tensor:
        """Expert ``expert`` alone on points ``x`` (C, features): the decoding path, where
        each expert gets exactly its own points and no capacity buffer."""
        w0 = self.w0
        for weight, bias in zip(self.weights, self.biases, strict=True):
            x = torch.addmm(bias[expert] * w0, x, weight[expert] * w0).sin_()
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w0 = self.w0
        grad = torch.is_grad_enabled()
        for weight, bias in zip(self.weights, self.biases, strict=True):
            if grad:
                x = _SineBaddbmm.apply(x, weight, bias, w0)
            else:
                x = torch.sin(torch.baddbmm(bias * w0, x, weight * w0))
        return x
