"""MoESiren: shared encoder -> router -> top-k SIREN experts -> gate-weighted combine ->
shared decoder (paper Eq. 1, Fig. 2).

Dispatch follows GShard/Tutel: every expert gets a fixed-size buffer of ``capacity`` slots per
step (paper §3.5 "uniform dispatch"): assignments beyond it are dropped, empty slots stay zero.
One ``baddbmm`` per expert layer then runs all experts at once. At decode time routing is
dropless: ``capacity_factor=None`` sizes the buffers to the busiest expert of the chunk.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from .gate import Gate, route
from .siren import BatchedSineExperts, SineLayer

__all__ = ["MoEOutput", "MoESiren", "dispatch_slots"]


class MoEOutput(NamedTuple):
    """value (B, out); aux_loss scalar; kept (B,) bool, False for points every one of whose
    assignments overflowed an expert; load (n,) fraction of top-1 choices per expert."""

    value: torch.Tensor
    aux_loss: torch.Tensor
    kept: torch.Tensor
    load: torch.Tensor


def dispatch_slots(
    expert_index: torch.Tensor, num_experts: int, capacity: int | None
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Buffer slot of every (choice, point) assignment.

    Assignments are ordered choice-major (all first choices, then all second choices), so a
    point's first choice has priority over another point's second choice (GShard).

    Returns ``slot`` (k*B,) = expert * capacity + position, ``keep`` (k*B,) bool (position <
    capacity), and the capacity used (the busiest expert's count when ``capacity`` is None).
    """
    flat = expert_index.t().reshape(-1)
    one_hot = F.one_hot(flat, num_experts)
    position = (torch.cumsum(one_hot, dim=0) - 1).gather(1, flat[:, None]).squeeze(1)
    if capacity is None:
        capacity = max(1, int(one_hot.sum(dim=0).max()))
    keep = position < capacity
    return flat * capacity + position, keep, capacity


class MoESiren(nn.Module):
    """Mixture-of-experts SIREN mapping coordinates in [-1, 1] to normalised intensities."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        hidden = config.hidden_features
        self.encoder = SineLayer(config.in_features, hidden, config.w0_first, is_first=True)
        self.gate = Gate(hidden, config.gate_hidden, config.num_experts)
        self.experts = BatchedSineExperts(
            config.num_experts, hidden, config.expert_layers, config.w0
        )
        self.decoder = nn.Linear(hidden, config.out_features)

    def forward(self, coords: torch.Tensor, capacity_factor: float | None = None) -> MoEOutput:
        """Evaluate ``coords`` (B, in_features).

        ``capacity_factor`` limits each expert to ``ceil(Cf * k * B / n)`` points (training);
        None routes every point (decoding).
        """
        cfg = self.config
        batch = coords.shape[0]
        features = self.encoder(coords)
        routing = route(self.gate(features), cfg.top_k)
        capacity = None
        if capacity_factor is not None:
            capacity = max(1, math.ceil(capacity_factor * cfg.top_k * batch / cfg.num_experts))
        slot, keep, capacity = dispatch_slots(routing.expert_index, cfg.num_experts, capacity)

        token = torch.arange(batch, device=coords.device).repeat(cfg.top_k)[keep]
        slot = slot[keep]
        weight = routing.weight.t().reshape(-1)[keep]

        buffer = features.new_zeros(cfg.num_experts * capacity, cfg.hidden_features)
        buffer[slot] = features[token]
        expert_out = self.experts(buffer.view(cfg.num_experts, capacity, -1))
        weighted = expert_out.reshape(cfg.num_experts * capacity, -1)[slot] * weight[:, None]
        combined = weighted.new_zeros(batch, cfg.hidden_features).index_add_(0, token, weighted)

        kept = torch.zeros(batch, dtype=torch.bool, device=coords.device)
        kept[token] = True
        top1 = routing.expert_index[:, 0]
        load = torch.bincount(top1, minlength=cfg.num_experts).float() / batch
        return MoEOutput(self.decoder(combined), routing.aux_loss, kept, load)

    @torch.no_grad()
    def expert_labels(self, coords: torch.Tensor) -> torch.Tensor:
        """Top-1 expert of each coordinate (argmax of the gate), int64 (B,)."""
        return torch.argmax(self.gate(self.encoder(coords)), dim=-1)

    def gate_parameters(self) -> list[nn.Parameter]:
        """The router's parameters, frozen after ``freeze_router_at`` (paper §4.1)."""
        return list(self.gate.parameters())
