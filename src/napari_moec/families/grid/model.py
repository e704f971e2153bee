"""The grid family's network: integer latent grids -> router -> ReLU-MLP experts -> decoder.

::

    voxel (t,)z,y,x --separable interpolation of L latent grids (interp.py)--> features f (L,)
    [coords, f] --router Linear(ndim+L, G) ReLU Linear(G, n)--> softmax, top-k    [n > 1]
    f --expert e: Linear(L, h) ReLU (Linear(h, h) ReLU)*--> z_e --decoder Linear(h, 1)--> v_e
    value = sum_k p_k v_{e_k}        (intensities in the training range [-1, 1])

Latents are stored as integers (Cool-chic: quantization step 1, the first expert layer absorbs
the scale). Training sees them with additive U(-0.5, 0.5) noise, then rounded with a straight-
through gradient (``quantized``). The decoder is linear, so applying it inside each expert's
block equals applying it to the gate-weighted sum, and only one scalar per assignment is
permuted back: the dispatch groups the assignments by expert (a mask each), is dropless (no
capacity), and runs the same on a CPU or a GPU (index_select/scatter only, no custom kernel).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from torch import nn

from .config import GridConfig, mlp_layout
from .context import coarse_slots, context_slots, even_mask, level_kind, slot_count
from .interp import upsample
from .learned import MAX_SPREAD, MEAN_LIMIT, MIN_SPREAD, neighbour_sums
from .rate import laplace_bits, slot_laplace_bits
from .routing import route

__all__ = ["GridModel", "LatentContext", "LatentGrids", "QuantMode", "Synthesis"]

#: How decisively the router's balanced start splits the volume (``Synthesis._start_balanced``):
#: logits ``scale * d_e . coords``, decisive enough to split, soft enough to move.
BALANCED_SCALE = 4.0

QuantMode = Literal["none", "noise", "ste", "hard"]


@dataclass
class LatentContext:
    """What the coder conditions each level's latents on (:meth:`LatentGrids.context`):
    ``levels[i]`` the context slots of level ``i``, or for a learned-context level its
    neighbour sums ``(S, A)``; and, made once per context for the rate proxy's single pass
    (:meth:`LatentGrids.bits`), the slot levels' slots flattened and offset by
    ``level * slots a level`` (indices into the flattened scale table), of every latent and of the
    stored ones."""

    levels: list
    _flat: dict[bool, torch.Tensor] = field(default_factory=dict, init=False, repr=False)

    def flat_slots(self, grids: LatentGrids, stored: bool) -> torch.Tensor:
        if stored not in self._flat:
            n = grids.log_scale.shape[1]
            offset = [
                c if grids.kinds[i] == "lin" else c + i * n for i, c in enumerate(self.levels)
            ]
            self._flat[stored] = grids.flat_levels(offset, stored)
        return self._flat[stored]


def _parts(condition) -> tuple:
    """A level's condition as a tuple of tensors: its slots, or its ``(S, A)`` sums."""
    return condition if isinstance(condition, tuple) else (condition,)


class LatentGrids(nn.Module):
    """The L latent grids (float parameters while training, integers in the file) and the
    learned parameters of the rate proxy: Laplace scales per (level, context slot), and with
    the learned context (``"lin"``) per level the ``alpha, beta, gamma`` of :mod:`.learned`."""

    def __init__(self, cfg: GridConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.latents = nn.ParameterList([nn.Parameter(torch.zeros(g)) for g in cfg.grid_shapes])
        last = cfg.num_levels - 1
        #: How the payload codes each level (:func:`.context.level_kind`): the proxy models
        #: the same groups.
        self.kinds = [level_kind(cfg.context, g, i == last) for i, g in enumerate(cfg.grid_shapes)]
        self.log_scale = nn.Parameter(torch.zeros(cfg.num_levels, slot_count(cfg.context)))
        # (alpha, c0, c1): log2 spread = c0 + c1 log2(1 + A), i.e. the coder's beta = 4 c0 + 8,
        # gamma = c1 (learned.py). In octaves, not spread indices, so that Adam's steps move
        # the scale as fast as ``log_scale`` (in indices 600 steps moved it 1.5 octaves and
        # the proxy overstated the bits 4x at hipct 1024x). Start: half the neighbours' mean,
        # the spread of a Laplace of scale 1 (cb's start), half an octave per octave of A.
        self.ctx = (
            nn.Parameter(torch.tensor([[0.5, -0.78, 0.5]] * cfg.num_levels))
            if "lin" in self.kinds
            else None
        )
        for i, g in enumerate(cfg.grid_shapes):
            self.register_buffer(
                f"even{i}", torch.from_numpy(even_mask(g).copy()), persistent=False
            )
        #: Per level, the node box (a slice per axis) a payload stores; None: every latent.
        #: A tile's trainer sets it (GridTrainer, "Decoded box"): the latents outside it are
        #: read by margin voxels only, which no reader decodes, so they train like the others
        #: but are neither counted against the budget nor stored (stored as 0).
        self.stored: list[tuple[slice, ...]] | None = None

    def stored_count(self) -> int:
        """How many latents a payload stores (:attr:`stored`)."""
        if self.stored is None:
            return self.cfg.latent_count
        return sum(math.prod(s.stop - s.start for s in box) for box in self.stored)

    def rate_parameters(self) -> list[nn.Parameter]:
        """The rate proxy's own parameters (trained with the rate term only)."""
        return [self.log_scale] + ([self.ctx] if self.ctx is not None else [])

    def quantized(self, mode: QuantMode) -> list[torch.Tensor]:
        """Latents as the synthesis sees them: as they are, with U(-.5, .5) noise, rounded with
        a straight-through gradient, or rounded and detached."""
        if mode == "none":
            return list(self.latents)
        if mode == "noise":
            return [y + torch.rand_like(y) - 0.5 for y in self.latents]
        if mode == "ste":
            return [y + (torch.round(y) - y).detach() for y in self.latents]
        if mode == "hard":
            return [torch.round(y).detach() for y in self.latents]
        raise ValueError(f"unknown quantization mode {mode!r}")

    def as_stored(self, values: list) -> list:
        """``values`` (one array or tensor a level) as a payload stores them: a tile's
        latents outside its stored boxes (:attr:`stored`) are 0; without boxes, unchanged."""
        if self.stored is None:
            return values
        out = []
        for v, box in zip(values, self.stored, strict=True):
            kept = np.zeros_like(v) if isinstance(v, np.ndarray) else torch.zeros_like(v)
            kept[box] = v[box]
            out.append(kept)
        return out

    @torch.no_grad()
    def slots(self, rounded: list[torch.Tensor] | None = None) -> list[torch.Tensor]:
        """Context slot of every latent of ``rounded`` (default: the latents rounded, what
        the coder of a whole file will see)."""
        q = [torch.round(y) for y in self.latents] if rounded is None else rounded
        out = []
        for i, kind in enumerate(self.kinds):
            even = getattr(self, f"even{i}")
            if kind == "cbc":
                out.append(coarse_slots(q[i].abs(), even, q[i + 1].abs()))
            elif kind == "cb":
                out.append(context_slots(q[i].abs(), even))
            else:
                out.append(torch.zeros(q[i].shape, dtype=torch.long, device=q[i].device))
        return out

    def _conditions(self, rounded: list[torch.Tensor]) -> list:
        """Per level, the context slots of ``rounded``, or with the learned context its
        neighbour sums ``(S, A)``."""
        out = self.slots(rounded)
        for i, kind in enumerate(self.kinds):
            if kind == "lin":
                out[i] = neighbour_sums(rounded[i], getattr(self, f"even{i}"))
        return out

    @torch.no_grad()
    def context(self) -> LatentContext:
        """What the coder conditions each level on, from the rounded latents: the context
        slots, or with the learned context the neighbour sums ``(S, A)``.

        A tile (:attr:`stored`) stores 0 for the latents outside its boxes, and the coder
        reads those zeros as the context of the stored latents at a box's faces: the stored
        latents get the contexts of the latents as stored. The others (margin latents, which
        train with the rate term but are not stored) keep the contexts of their trained
        neighbours, so their training is what it was."""
        rounded = [torch.round(y) for y in self.latents]
        out = self._conditions(rounded)
        if self.stored is not None:
            as_stored = self._conditions(self.as_stored(rounded))
            for full, boxed, box in zip(out, as_stored, self.stored, strict=True):
                for f, b in zip(_parts(full), _parts(boxed), strict=True):
                    f[box] = b[box]
        return LatentContext(out)

    @property
    def _slot_levels(self) -> list[int]:
        """The levels whose model is a Laplace scale per (level, slot): all but the learned
        context's."""
        return [i for i, kind in enumerate(self.kinds) if kind != "lin"]

    def flat_levels(self, per_level: list[torch.Tensor], stored: bool) -> torch.Tensor:
        """The slot levels' tensors (their stored boxes with ``stored``), flattened and
        concatenated in level order: one pass of the rate proxy covers them all."""
        parts = []
        for i in self._slot_levels:
            t = per_level[i]
            if stored and self.stored is not None:
                t = t[self.stored[i]]
            parts.append(t.reshape(-1))
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def bits(
        self, values: list[torch.Tensor], context: LatentContext, stored: bool = False
    ) -> torch.Tensor:
        """Rate proxy (:func:`.rate.laplace_bits`): bits of ``values`` (one per level) under
        the entropy model given ``context`` (:meth:`context`); ``stored``: of the latents a
        payload stores only (:attr:`stored`).

        The slot levels go through :func:`.rate.slot_laplace_bits` once, concatenated, their
        slots offset into the flattened ``(level, slot)`` scale table
        (:meth:`LatentContext.flat_slots`): one call a level cost a fixed ~0.3 ms on a CPU
        even for a level of 18 latents, and the levels under the compiled kernel's size ran
        eagerly; the macaque's 7 levels at 256x took 6.4 ms of a ~19 ms step (3.7 now), and
        a third of a step on grids of 11,000 to 440,000 latents (docs/benchmarks.md, session
        21). The values and gradients are the per-level calls' (the sum's order aside)."""
        total = 0
        if self._slot_levels:
            total = slot_laplace_bits(
                self.flat_levels(values, stored),
                self.log_scale.reshape(-1),
                context.flat_slots(self, stored),
            )
        for i in range(len(values)):
            if self.kinds[i] != "lin":
                continue
            v, c, even = values[i], context.levels[i], getattr(self, f"even{i}")
            if stored and self.stored is not None:
                box = self.stored[i]
                v, even = v[box], even[box]
                c = tuple(t[box] for t in c)
            s_sum, a_sum = c
            alpha, c0, c1 = self.ctx[i]
            mu = (alpha * s_sum / (2 * v.ndim)).clamp(-MEAN_LIMIT, MEAN_LIMIT)
            # the coder's spreads: 2^(j/4 - 2), the most peaked ones Gaussian (learned.py)
            log2_spread = c0 + c1 * torch.log2(1.0 + a_sum)
            spread = torch.exp2(log2_spread.clamp(MIN_SPREAD / 4 - 2, MAX_SPREAD / 4 - 2))
            log_b = -torch.log(torch.log1p(1.0 / spread))  # the Laplace scale of that ratio
            odd_bits = laplace_bits(v - mu, log_b)
            even_bits = laplace_bits(v, self.log_scale[i][0])
            total = total + torch.where(even, even_bits, odd_bits).sum()
        return total

    def features(self, grids: list[torch.Tensor], mats) -> torch.Tensor:
        """(L, B) features of the voxels selected by ``mats`` (``interp.axis_matrices``),
        feature-major as :class:`Synthesis` takes them."""
        return torch.stack([upsample(g, m).reshape(-1) for g, m in zip(grids, mats, strict=True)])


class _GatherColumns(torch.autograd.Function):
    """``src.index_select(1, index)`` whose backward is a gather too: with top-1 routing each
    source column is read once, so its gradient is one column of ``grad`` picked by
    ``inverse`` (k for top-k) and no scatter-add is needed (-30% per step on a CPU,
    REPORT.md 6). The dispatch also returns the experts' values through it (a permutation
    of one row, ``inverse`` its inverse)."""

    @staticmethod
    def forward(ctx, src, index, inverse):
        ctx.save_for_backward(inverse)
        return src.index_select(1, index)

    @staticmethod
    def backward(ctx, grad):
        (inverse,) = ctx.saved_tensors
        out = grad.index_select(1, inverse[0])
        for j in range(1, inverse.shape[0]):
            out = out + grad.index_select(1, inverse[j])
        return out, None, None


class Synthesis(nn.Module):
    """Router + ``n`` ReLU-MLP experts (stacked weights) + the shared linear decoder.

    Everything runs feature-major: features (L, B), hidden activations (h, B), router rows
    (n, B). The layers are a few units wide and B is 10^4-10^6 voxels, and a CPU multiplies
    ``(h, L) @ (L, B)`` and its backward ~3.5x faster than ``(B, L) @ (L, h)`` (measured:
    32k voxels, 8 units, one thread); per-expert quantities are contiguous rows. The stored
    tensors keep their (n, in, out) layout (the file's)."""

    def __init__(self, cfg: GridConfig, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        n, h = cfg.num_experts, cfg.hidden
        self.experts = nn.ModuleList()
        fan_in = cfg.num_levels
        for _ in range(cfg.expert_layers):  # nn.Linear's default init, per expert
            bound = 1.0 / math.sqrt(fan_in)
            layer = nn.Module()
            layer.weight = nn.Parameter(torch.empty(n, fan_in, h).uniform_(-bound, bound))
            layer.bias = nn.Parameter(torch.empty(n, 1, h).uniform_(-bound, bound))
            self.experts.append(layer)
            fan_in = h
        self.decoder = nn.Linear(h, 1)
        self.gate = None
        if n > 1:
            g = cfg.gate_hidden
            self.gate = nn.Sequential(
                nn.Linear(cfg.ndim + cfg.num_levels, g), nn.ReLU(), nn.Linear(g, n)
            )
        if generator is not None:  # nn.Linear's bounds, drawn from the caller's generator
            params = dict(self.named_parameters())
            with torch.no_grad():
                for name, p in params.items():
                    # dim 1 is the input of (out, in) Linear weights and (n, in, out) experts
                    fan_in = params[name.rsplit(".", 1)[0] + ".weight"].shape[1]
                    p.uniform_(-1.0, 1.0, generator=generator).mul_(1.0 / math.sqrt(fan_in))
        with torch.no_grad():
            # Every expert ReLU alive at the start, where all latents are 0: with signed
            # biases a 4-wide expert could start with a dead layer, pass no gradient to the
            # latents and stay a constant (ct_head 1024x, seed 0: 16.6 dB, 93-byte payload).
            for layer in self.experts:
                layer.bias.abs_()
            self.decoder.weight.mul_(0.5)
            self.decoder.bias.zero_()
            if self.gate is not None:
                self._start_balanced(generator)

    @torch.no_grad()
    def _start_balanced(self, generator: torch.Generator | None) -> None:
        """Start the router on a balanced spatial split (Neural Experts' balanced
        pre-assignment, made by the weights instead of a pre-training phase).

        At the start every latent is 0, so the features say nothing and a randomly initialised
        router sends (nearly) every voxel to one expert; with top-1 routing the others get no
        gradient and the run can end with one label (a 32³ widget test: 4 experts, one used).
        Here the first ``2·ndim`` hidden units carry ``relu(±coordinate)`` and the output
        layer turns them into ``scale · d_e · coords`` for ``n`` random unit directions
        ``d_e``: the experts start on ``n`` cones around the volume's centre, each with a
        share of the voxels. A gate of fewer than ``2·ndim`` units (the sizing's 4) carries
        ``relu(coordinate + 1)`` in ``ndim`` units instead, the same cones.

        The cones route by position, which does not help a model compress: kept, they trained
        0.3-2 dB worse at 2000 steps than a random start (notes.md, session 13), whose router
        reads the features but leaves a short run with one label. So the trainer takes them
        back out over the first quarter of the schedule (:meth:`fade_cones`,
        ``TrainSettings.cone_fade``): every expert has a share while the latents learn, then
        the router keeps what it learned from the features. Measured at 2000 steps, 4
        experts, 18 cases (shared volumes at 64x-1024x, seeds 0 and 1): +0.73 dB on average
        against the cones kept, better in 17 (notes.md, session 14). The output layer's
        edits are kept in ``cone_weight``/``cone_bias`` (buffers, not stored in a file).
        """
        first, last = self.gate[0], self.gate[2]
        if first.out_features < self.cfg.ndim:
            return  # too narrow to carry the coordinates: keep the random start
        before = (last.weight.clone(), last.bias.clone())
        self._write_cones(generator)
        # What the cones added to the output layer, for :meth:`fade_cones`.
        self.register_buffer("cone_weight", last.weight - before[0], persistent=False)
        self.register_buffer("cone_bias", last.bias - before[1], persistent=False)

    def _write_cones(self, generator: torch.Generator | None) -> None:
        """The weights of :meth:`_start_balanced`'s cones."""
        d, n = self.cfg.ndim, self.cfg.num_experts
        first, last = self.gate[0], self.gate[2]
        directions = torch.randn(n, d, generator=generator)
        directions /= directions.norm(dim=1, keepdim=True).clamp_min(1e-6)
        scale = BALANCED_SCALE
        if first.out_features < 2 * d:
            # Narrower gates (``sizing.ROUTED_GATE_HIDDEN``): one unit a coordinate,
            # relu(x + 1) = x + 1 on [-1, 1], and the output bias takes the 1 back out.
            first.weight[:d].zero_()
            first.bias[:d] = 1.0
            for j in range(d):
                first.weight[j, j] = 1.0
            last.weight[:, :d] = scale * directions
            last.weight[:, d:].mul_(0.1)
            last.bias.copy_(-scale * directions.sum(dim=1))
            return
        first.weight[: 2 * d].zero_()
        first.bias[: 2 * d].zero_()
        for j in range(d):
            first.weight[2 * j, j] = 1.0
            first.weight[2 * j + 1, j] = -1.0
        last.weight[:, : 2 * d] = 0.0
        last.weight[:, 0 : 2 * d : 2] = scale * directions
        last.weight[:, 1 : 2 * d : 2] = -scale * directions
        last.weight[:, 2 * d :].mul_(0.1)
        last.bias.zero_()

    @torch.no_grad()
    def fade_cones(self, fraction: float) -> None:
        """Take ``fraction`` of the balanced start's cones back out of the router's output
        layer (what training added stays): over a run's first steps the cones hand the
        partition to what the router learned from the features."""
        if self.gate is not None and hasattr(self, "cone_weight") and fraction:
            self.gate[2].weight.sub_(fraction * self.cone_weight)
            self.gate[2].bias.sub_(fraction * self.cone_bias)

    @torch.no_grad()
    def copy_first_expert(self) -> None:
        """Every expert's weights set to expert 0's (the dense start's upcycling: a model
        whose experts are equal decodes, under top-k with k >= 2, as expert 0 alone; under
        top-1 the Switch gate scales it by the winner's probability)."""
        for layer in self.experts:
            layer.weight[1:] = layer.weight[0]
            layer.bias[1:] = layer.bias[0]

    def stored(self) -> dict[str, torch.Tensor]:
        """The stored tensors by ``config.mlp_layout`` name (same order)."""
        params = dict(self.named_parameters())
        return {name: params[name] for name, _ in mlp_layout(self.cfg)}

    def _expert(self, e: int, x: torch.Tensor) -> torch.Tensor:
        """Expert ``e`` and the decoder's weights on features (L, B_e): values (1, B_e)."""
        for layer in self.experts:
            # In place: the product is a fresh tensor no backward reads (-10 % of a routed
            # decode: relu's own output buffer, macaque, 4 experts, top-2).
            x = torch.addmm(layer.bias[e].t(), layer.weight[e].t(), x).relu_()
        return self.decoder.weight @ x

    def logits(self, f: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        """Router logits (n, B) of features (L, B) at coordinates (B, ndim)."""
        first, last = self.gate[0], self.gate[2]
        inputs = torch.cat([coords.t(), f], dim=0)
        hidden = torch.addmm(first.bias[:, None], first.weight, inputs).relu_()
        return torch.addmm(last.bias[:, None], last.weight, hidden)

    def _route(self, rows: torch.Tensor, probabilities: bool = True):
        """Router logits (n, B) -> probabilities (n, B) (``None`` when not asked for and not
        needed), the gate weights (k, B) and experts (k, B) of every voxel's top-k
        (:func:`.routing.route`). Training and decoding share its arithmetic, so a file
        decodes with the weights it was trained with (to the last bit of a weight where a
        large CPU training batch ran the compiled kernel)."""
        return route(rows, self.cfg.top_k, probabilities)

    def forward(
        self,
        f: torch.Tensor,
        coords: torch.Tensor | None = None,
        frozen_router: bool = False,
        dense: bool = False,
    ):
        """Features (L, B), coordinates (B, ndim) -> value (B,), balance loss (scalar), load
        (n,) and the top-1 expert (B,). ``dense``: expert 0 on every voxel, no router (the
        trainer's dense start)."""
        B, n, k = f.shape[1], self.cfg.num_experts, self.cfg.top_k
        dev = f.device
        if self.gate is None or dense:
            value = self._expert(0, f)[0] + self.decoder.bias
            load = value.new_zeros(n)
            load[0] = 1.0
            return (
                value,
                value.new_zeros(()),
                load,
                torch.zeros(B, dtype=torch.long, device=dev),
            )
        probs, weight, index = self._route(self.logits(f.detach() if frozen_router else f, coords))
        top1 = index[0]
        # The assignments (choice-major, k * B) grouped by expert, each expert's in their
        # own order: what a stable sort by expert gives, from n masks (no sort).
        flat_e = index.reshape(-1)
        picks = [(flat_e == e).nonzero().squeeze(1) for e in range(n)]
        counts = [p.numel() for p in picks]
        order = torch.cat(picks)
        position = torch.empty_like(order).scatter_(
            0, order, torch.arange(order.numel(), device=dev)
        )
        voxels = order % B if k > 1 else order
        load = torch.bincount(top1, minlength=n).to(probs.dtype) / B
        # Switch-style balance loss: n * sum_e (top-1 share) * (mean probability).
        aux = n * torch.sum(load * probs.mean(dim=1))
        xs = _GatherColumns.apply(f, voxels, position.view(k, B))
        # split, not slices: a slice's backward writes its gradient into a zeroed copy of
        # the whole input, one per expert.
        outs = [self._expert(e, x) for e, x in enumerate(xs.split(counts, dim=1)) if counts[e]]
        # Each assignment's value back in choice-major order: a permutation of one row, whose
        # backward is the inverse gather.
        y = torch.cat(outs, dim=1)
        terms = _GatherColumns.apply(y, position, order[None])[0].view(k, B) * weight
        if k > 2:  # in expert order, as ``infer`` adds them (k <= 2: addition commutes)
            terms = terms.gather(0, torch.argsort(index, dim=0, stable=True))
        value = terms[0]
        for j in range(1, k):
            value = value + terms[j]
        return value + self.decoder.bias, aux, load, top1

    @torch.no_grad()
    def infer(self, f: torch.Tensor, coords: torch.Tensor | None = None):
        """Values (B,) and top-1 experts (B,) for decoding: :meth:`forward`'s values without
        its training machinery. Each expert takes the voxels routed to it by a mask (no sort,
        no inverse permutation, no balance loss): ``forward`` spent half of a routed decode
        sorting assignments and building their inverse (macaque, 4 experts, top-2). The
        experts' terms are added in expert order, as ``forward`` sums them."""
        if self.gate is None:
            value = self._expert(0, f)[0] + self.decoder.bias
            return value, torch.zeros(f.shape[1], dtype=torch.long, device=f.device)
        _, weight, index = self._route(self.logits(f, coords), probabilities=False)
        n, k = self.cfg.num_experts, self.cfg.top_k
        value = torch.zeros(f.shape[1], device=f.device, dtype=f.dtype)
        for e in range(n):
            chosen = index == e  # (k, B): at most one True per column
            mask, w = chosen[0], weight[0]
            for j in range(1, k):
                mask = mask | chosen[j]
                w = torch.where(chosen[j], weight[j], w)
            voxels = mask.nonzero().squeeze(1)
            if voxels.numel():
                y = self._expert(e, f.index_select(1, voxels))[0] * w.index_select(0, voxels)
                value.index_add_(0, voxels, y)
        return value + self.decoder.bias, index[0]

    @torch.no_grad()
    def labels(self, f: torch.Tensor, coords: torch.Tensor | None = None) -> torch.Tensor:
        """Top-1 expert of every voxel (the partition a Labels layer shows)."""
        if self.gate is None:
            return torch.zeros(f.shape[1], dtype=torch.long, device=f.device)
        return torch.argmax(self.logits(f, coords), dim=0)


class GridModel(nn.Module):
    """Latent grids + synthesis for one volume.

    ``best_payload`` holds the best real payload seen while training (set by the trainer at
    its checkpoints, never stored in the state dict), so the final budget fit can keep it.
    """

    def __init__(self, cfg: GridConfig, *, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.grids = LatentGrids(cfg)
        self.synth = Synthesis(cfg, generator)
        self.best_payload: bytes | None = None
        self.best_network_step = 1.0  # the network step ``best_payload`` was packed at

    def forward(self, mats, coords=None, mode: QuantMode = "none", frozen_router: bool = False):
        f = self.grids.features(self.grids.quantized(mode), mats)
        return self.synth(f, coords, frozen_router)

    @property
    def needs_coords(self) -> bool:
        return self.cfg.num_experts > 1

    @torch.no_grad()
    def decode(self, coords: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(values (N, 1), top-1 labels (N,))`` at coordinates in [-1, 1] (the contract's
        ``DecodableModel``); regions decode faster through ``decode.decode_region``."""
        value, _, _, top1 = self.synth(point_features(self, coords), coords)
        return value[:, None], top1

    @torch.no_grad()
    def expert_labels(self, coords: torch.Tensor) -> torch.Tensor:
        return self.synth.labels(point_features(self, coords), coords)


def _axis_taps(c: torch.Tensor, n: int, g: int, kernel: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Node indices and weights (N, taps) along one axis at coordinates ``c`` in [-1, 1]: the
    per-point form of ``interp.interp_matrix`` (same special cases, same formulas)."""
    if g == 1 or n == 1:
        return torch.zeros_like(c, dtype=torch.long)[:, None], torch.ones_like(c)[:, None]
    u = (c.double() + 1.0) * 0.5 * (g - 1)
    if g == n:  # one node per voxel: the separable path picks the node
        return torch.round(u).long().clamp(0, g - 1)[:, None], torch.ones_like(c)[:, None]
    i0 = torch.floor(u).long().clamp(max=g - 2)
    t = u - i0
    if kernel == "linear":
        idx = torch.stack([i0, i0 + 1], dim=1)
        w = torch.stack([1 - t, t], dim=1)
    else:
        t2, t3 = t * t, t * t * t
        idx = torch.stack([i0 + k for k in range(-1, 3)], dim=1).clamp(0, g - 1)
        w = torch.stack(
            [
                (1 - 3 * t + 3 * t2 - t3) / 6,
                (4 - 6 * t2 + 3 * t3) / 6,
                (1 + 3 * t + 3 * t2 - 3 * t3) / 6,
                t3 / 6,
            ],
            dim=1,
        )
    return idx, w.float()


def point_features(model: GridModel, coords: torch.Tensor) -> torch.Tensor:
    """(L, N) features at arbitrary coordinates (N, ndim) in [-1, 1]: ``taps^ndim`` nodes
    gathered per level (64 in 3D with the cubic kernel). Equal, up to float rounding, to the
    separable path on voxel coordinates; used where a caller has points, not a region."""
    cfg, cols = model.cfg, []
    for y, g in zip(model.grids.latents, cfg.grid_shapes, strict=True):
        flat = torch.zeros(coords.shape[0], 1, dtype=torch.long, device=coords.device)
        weight = torch.ones(coords.shape[0], 1, device=coords.device)
        for axis, (n, gk) in enumerate(zip(cfg.shape, g, strict=True)):
            idx, w = _axis_taps(coords[:, axis], n, gk, cfg.kernel)
            flat = (flat[:, :, None] * gk + idx[:, None, :]).reshape(coords.shape[0], -1)
            weight = (weight[:, :, None] * w[:, None, :]).reshape(coords.shape[0], -1)
        cols.append((y.detach().reshape(-1)[flat] * weight).sum(dim=1))
    return torch.stack(cols)
