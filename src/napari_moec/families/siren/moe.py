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

from ...config import ModelConfig
from .gate import Gate, route
from .sine import BatchedSineExperts, SineLayer

__all__ = ["MoEOutput", "MoESiren", "dispatch_slots", "expert_capacity"]


class MoEOutput(NamedTuple):
    """value (B, out); aux_loss scalar; kept (B,) bool, False for points every one of whose
    assignments overflowed an expert; load (n,) fraction of top-1 choices per expert."""

    value: torch.Tensor
    aux_loss: torch.Tensor
    kept: torch.Tensor
    load: torch.Tensor


def expert_capacity(capacity_factor: float, top_k: int, batch: int, num_experts: int) -> int:
    """Buffer slots per expert for a batch of ``batch`` points: ``ceil(Cf * k * B / n)``, at
    least 1 (paper §3.5). Every backend sizes its buffers with this one rule."""
    return max(1, math.ceil(capacity_factor * top_k * batch / num_experts))


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


class _GatherRows(torch.autograd.Function):
    """``src[index]`` whose backward is also a gather.

    Dispatch and combine move rows by a partial permutation whose inverse we know: source row
    ``s`` is the output rows ``inverse[:, s]`` (J, S), where ``M`` (the output length) means
    none. So the gradient is ``sum_j cat([grad, 0])[inverse[j]]``: gathers again, never the
    scatter-add autograd would use for ``src[index]``, which was the slowest op of a CPU
    training step. Output rows not listed in ``inverse`` get no gradient: callers use them
    only for padding whose values are discarded.
    """

    @staticmethod
    def forward(ctx, src: torch.Tensor, index: torch.Tensor, inverse: torch.Tensor):
        ctx.save_for_backward(inverse)
        return src.index_select(0, index)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (inverse,) = ctx.saved_tensors
        padded = torch.cat([grad, grad.new_zeros(1, grad.shape[1])])
        out = padded.index_select(0, inverse[0])
        for j in range(1, inverse.shape[0]):
            out = out + padded.index_select(0, inverse[j])
        return out, None, None


gather_rows = _GatherRows.apply


class MoESiren(nn.Module):
    """Mixture-of-experts SIREN mapping coordinates in [-1, 1] to normalised intensities."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        hidden = config.hidden_features
        self.encoder = SineLayer(config.in_features, hidden, config.w0_first, is_first=True)
        # One expert needs no router: storing one would spend bytes on weights that route
        # nothing, so a 1-expert model is exactly a plain SIREN of the same file size.
        self.gate = (
            Gate(hidden, config.gate_hidden, config.num_experts) if config.num_experts > 1 else None
        )
        self.experts = BatchedSineExperts(
            config.num_experts, hidden, config.expert_layers, config.w0
        )
        self.decoder = nn.Linear(hidden, config.out_features)
        #: The route -> dispatch -> experts -> combine step of a routed model, or None for the
        #: native one in :meth:`_run`. Called as ``mixture(model, features, logits,
        #: capacity_factor)``, it returns a :class:`MoEOutput` whose value is the combined
        #: (B, hidden) features before the decoder. Set by :func:`.tutel_backend.use_backend`;
        #: a plain attribute, not a module,
        #: so parameters, state_dict and the stored layout do not depend on it.
        self.mixture = None

    def forward(self, coords: torch.Tensor, capacity_factor: float | None = None) -> MoEOutput:
        """Evaluate ``coords`` (B, in_features).

        ``capacity_factor`` limits each expert to ``ceil(Cf * k * B / n)`` points (training);
        None routes every point (decoding).
        """
        return self._run(self.encoder(coords), capacity_factor, None)

    def _run(
        self, features: torch.Tensor, capacity_factor: float | None, logits: torch.Tensor | None
    ) -> MoEOutput:
        cfg = self.config
        batch = features.shape[0]
        if self.gate is None:
            value = self.decoder(self.experts(features[None])[0])
            ones = torch.ones(batch, dtype=torch.bool, device=features.device)
            # Eq. 3 is exactly 1 for a single expert; it is a constant without gradient.
            return MoEOutput(value, value.new_ones(()), ones, value.new_ones(1))
        logits = self.gate(features) if logits is None else logits
        if self.mixture is not None:
            mixed = self.mixture(self, features, logits, capacity_factor)
            return mixed._replace(value=self.decoder(mixed.value))
        routing = route(logits, cfg.top_k)
        if capacity_factor is None and not torch.is_grad_enabled():
            return self._decode_grouped(features, routing)
        capacity = None
        if capacity_factor is not None:
            capacity = expert_capacity(capacity_factor, cfg.top_k, batch, cfg.num_experts)
        slot, keep, capacity = dispatch_slots(routing.expert_index, cfg.num_experts, capacity)

        # Dispatch: buffer slot <- its token; empty slots read token 0 (padding: computed,
        # never combined, no gradient). Combine: token <- its k slots, weighted, with weight 0
        # for dropped assignments. Both are gathers (see _GatherRows); no boolean masks, so no
        # host sync.
        k, n, slots = cfg.top_k, cfg.num_experts, cfg.num_experts * capacity
        device = features.device
        position = torch.arange(k * batch, device=device)
        kept_slot = torch.where(keep, slot, slots)  # (k*B,) choice-major; `slots` = dropped
        slot_position = torch.full((slots + 1,), k * batch, device=device)
        slot_position[kept_slot] = position  # dropped ones all land in the discarded last entry
        slot_position = slot_position[:slots]
        slot_token = torch.where(slot_position < k * batch, slot_position % batch, 0)

        buffer = gather_rows(features, slot_token, kept_slot.view(k, batch))
        expert_out = self.experts(buffer.view(n, capacity, -1)).reshape(slots, -1)
        picked = gather_rows(expert_out, torch.where(keep, slot, 0), slot_position[None])
        weight = routing.weight.t() * keep.view(k, batch)
        combined = (picked.view(k, batch, -1) * weight[..., None]).sum(dim=0)

        kept = keep.view(k, batch).any(dim=0)
        top1 = routing.expert_index[:, 0]
        load = torch.bincount(top1, minlength=cfg.num_experts).float() / batch
        return MoEOutput(self.decoder(combined), routing.aux_loss, kept, load)

    def _decode_grouped(self, features: torch.Tensor, routing) -> MoEOutput:
        """Dropless mixture without gradients: each expert runs on exactly its own points.

        Training needs fixed-size capacity buffers (uniform dispatch, paper §3.5); decoding
        does not, and the buffers sized to the busiest expert cost up to ``n`` times the
        experts' work when the partition is uneven (80/20 is common: 1.6x for 2 experts).
        Points are sorted by expert, each expert runs one matmul per layer on its contiguous
        block, and the combine sums the k choices in the same order as the training path.
        The decoder is linear, so ``decoder(sum_k w_k e_k) = sum_k w_k (W e_k) + b``: its
        weight is applied inside each expert's block, and the scatter back to voxel order and
        the combine move ``out_features`` numbers per voxel instead of ``hidden_features``.
        """
        cfg = self.config
        batch = features.shape[0]
        k = cfg.top_k
        flat = routing.expert_index.t().reshape(-1)  # (k*B,) choice-major, like training
        order = torch.argsort(flat, stable=True)
        counts = torch.bincount(flat, minlength=cfg.num_experts).tolist()
        rows = features.index_select(0, order % batch)
        out = rows.new_empty(rows.shape[0], cfg.out_features)
        project = self.decoder.weight.t()
        begin = 0
        for expert, count in enumerate(counts):
            if count:
                block = self.experts.run_one(expert, rows[begin : begin + count])
                torch.mm(block, project, out=out[begin : begin + count])
            begin += count
        picked = torch.empty_like(out)
        picked[order] = out
        weight = routing.weight.t()
        value = (picked.view(k, batch, -1) * weight[..., None]).sum(dim=0) + self.decoder.bias
        kept = torch.ones(batch, dtype=torch.bool, device=features.device)
        top1 = routing.expert_index[:, 0]
        load = torch.bincount(top1, minlength=cfg.num_experts).float() / batch
        return MoEOutput(value, routing.aux_loss, kept, load)

    @torch.no_grad()
    def decode(self, coords: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Dropless evaluation of ``coords``: values (B, out) and top-1 experts (B,) int64, in
        one pass (the router runs once for both)."""
        features = self.encoder(coords)
        if self.gate is None:
            labels = torch.zeros(coords.shape[0], dtype=torch.int64, device=coords.device)
            return self._run(features, None, None).value, labels
        logits = self.gate(features)
        return self._run(features, None, logits).value, torch.argmax(logits, dim=-1)

    @torch.no_grad()
    def expert_labels(self, coords: torch.Tensor) -> torch.Tensor:
        """Top-1 expert of each coordinate (argmax of the gate), int64 (B,)."""
        if self.gate is None:
            return torch.zeros(coords.shape[0], dtype=torch.int64, device=coords.device)
        return torch.argmax(self.gate(self.encoder(coords)), dim=-1)

    def layout_parameters(self) -> dict[str, nn.Parameter]:
        """Parameters by their name in the file format's layout
        (:func:`napari_moec.format.parameter_layout`), which is part of the ``.moec`` spec:
        this mapping, not attribute names, decides what a file stores."""
        params = {
            "encoder.weight": self.encoder.linear.weight,
            "encoder.bias": self.encoder.linear.bias,
        }
        if self.gate is not None:
            for i, linear in enumerate(self.gate.linears):
                params[f"gate.{i}.weight"] = linear.weight
                params[f"gate.{i}.bias"] = linear.bias
        for i, weight in enumerate(self.experts.weights):
            params[f"experts.{i}.weight"] = weight
        for i, bias in enumerate(self.experts.biases):
            params[f"experts.{i}.bias"] = bias
        params["decoder.weight"] = self.decoder.weight
        params["decoder.bias"] = self.decoder.bias
        return params

    def layout_state(self) -> dict[str, torch.Tensor]:
        """Detached weights keyed by layout name: what :func:`~napari_moec.format.pack` takes."""
        return {name: p.detach() for name, p in self.layout_parameters().items()}

    @torch.no_grad()
    def load_layout_state(self, state: dict[str, torch.Tensor]) -> None:
        """Copy weights keyed by layout name (from :func:`~napari_moec.format.unpack`) in."""
        params = self.layout_parameters()
        if set(state) != set(params):
            raise ValueError(f"state has tensors {sorted(set(state) ^ set(params))} unknown here")
        for name, param in params.items():
            param.copy_(state[name].to(param.device, param.dtype))

    def gate_parameters(self) -> list[nn.Parameter]:
        """The router's parameters, frozen after ``freeze_router_at`` (paper §4.1)."""
        return [] if self.gate is None else list(self.gate.parameters())
