"""The router: a gate network that returns logits, and a pure top-k routing function.

Paper §3.2 deepens Shazeer's one-layer gate with two Linear+ReLU layers before the final
Linear + softmax. Routing runs in float32 with autocast off (Tutel's ``fp32_gate``): softmax and
top-k ties in bf16 flip assignments between steps and destabilise the partition.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

__all__ = ["Gate", "Routing", "balance_loss", "route"]


class Gate(nn.Module):
    """Features ``(B, in_features)`` -> expert logits ``(B, num_experts)``."""

    def __init__(self, in_features: int, hidden_features: int, num_experts: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_features, hidden_features),
            nn.ReLU(),
            nn.Linear(hidden_features, hidden_features),
            nn.ReLU(),
            nn.Linear(hidden_features, num_experts),
        )

    @property
    def linears(self) -> tuple[nn.Linear, nn.Linear, nn.Linear]:
        """The three linear layers, input to output."""
        return self.net[0], self.net[2], self.net[4]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self.net(x.float())


class Routing(NamedTuple):
    """Result of :func:`route` for a batch of B points.

    expert_index : (B, k) int64, chosen experts, best first.
    weight : (B, k) float32, combine weights (top-1: the softmax probability, so the gate gets
        a gradient through the output; top-2: renormalised to sum to 1, as in GShard).
    aux_loss : scalar, the load-balancing loss of paper Eq. 3.
    """

    expert_index: torch.Tensor
    weight: torch.Tensor
    aux_loss: torch.Tensor


def balance_loss(probs: torch.Tensor, top1: torch.Tensor) -> torch.Tensor:
    """Paper Eq. 3: ``n / B^2 * sum_i c_i * sum_x G(x)_i``; equals 1 at uniform load.

    ``c_i`` (hard counts of top-1 choices) carries no gradient; the gate learns through the
    summed probabilities.
    """
    batch, num_experts = probs.shape
    counts = torch.bincount(top1, minlength=num_experts).to(probs.dtype)
    return num_experts / float(batch) ** 2 * torch.sum(counts * probs.sum(dim=0))


def route(logits: torch.Tensor, top_k: int) -> Routing:
    """Pick the top-k experts of each point from gate logits ``(B, n)``."""
    with torch.autocast(device_type=logits.device.type, enabled=False):
        probs = torch.softmax(logits.float(), dim=-1)
        weight, expert_index = torch.topk(probs, top_k, dim=-1)
        if top_k > 1:
            weight = weight / weight.sum(dim=-1, keepdim=True)
        aux = balance_loss(probs, expert_index[:, 0])
    return Routing(expert_index, weight, aux)
