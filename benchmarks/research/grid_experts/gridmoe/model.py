"""GridMoE: multi-resolution latent grids -> router -> MLP experts -> linear decoder.

Design (a) of the study, the recommended one::

    voxel index --(separable interpolation of L small grids, interp.py)--> features f (L,)
    f --router MLP--> logits (n,) --softmax, top-k--> experts e, weights p
    f --expert e: Linear(L,h) act [Linear(h,h) act]*--> z_e (h,)
    value = decoder( sum_e p_e z_e )                       (decoder: Linear(h, 1))

The latent grids are the bulk of the file. Level l holds ``ceil((N-1)/2^l)+1`` nodes per axis
(``interp.level_shapes``); every latent is stored as an integer (quantization step 1, as in
Cool-chic: the first expert layer absorbs the scale) and entropy coded with one parametric
(discrete Laplace / Gaussian) model per level (``coding``). During training the latents see
additive uniform noise (rate proxy and synthesis), later a straight-through rounding.

The rate proxy is ``-log2 P(y + u)`` under a zero-mean Laplace of learned scale per level,
integrated over the unit bin, i.e. the bits a per-level factorized entropy coder would spend.

Routing is dropless on the CPU: points are sorted by expert and each expert runs on its
contiguous slice (one small matmul chain per expert; no capacity, no padding).
With ``num_experts == 1`` there is no router and no balance loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, asdict

import torch
import torch.nn.functional as F
from torch import nn

from .interp import level_shapes, upsample

__all__ = ["GridConfig", "GridMoE", "laplace_bits"]

LN2 = math.log(2.0)


@dataclass(frozen=True)
class GridConfig:
    shape: tuple[int, ...]          # volume shape (3D ZYX or 4D TZYX)
    num_levels: int = 6
    first_level: int = 1            # 0 = a full-resolution level
    kernel: str = "linear"          # "linear" | "cubic"
    hidden: int = 16
    num_experts: int = 1
    top_k: int = 1
    expert_layers: int = 2          # Linear layers inside an expert (>= 1)
    gate_hidden: int = 8
    act: str = "relu"               # "relu" | "gelu" | "sin"
    context: str = "none"           # latent entropy model: "none" (factorized) | "cb"
    grid_per_expert: int = 0        # design (b): every expert owns its own set of grids
    gate_coords: int = 1            # the router also reads the voxel coordinates
    synth: str = "mlp"              # "mlp" (designs a, b) | "siren" (design c)
    keep_axis: int = 0              # axes of <= this many voxels are never downsampled (measured: 0 is best)

    @property
    def needs_coords(self) -> bool:
        return self.synth == "siren" or bool(self.gate_coords and self.num_experts > 1)

    @property
    def latent_shapes(self) -> list[tuple[int, ...]]:
        lead = (self.num_experts,) if self.grid_per_expert else ()
        return [lead + g for g in self.grid_shapes]

    @property
    def feature_dim(self) -> int:
        return self.num_levels

    @property
    def grid_shapes(self) -> list[tuple[int, ...]]:
        return level_shapes(self.shape, self.num_levels, self.first_level,
                            keep_axis=self.keep_axis)

    def to_dict(self) -> dict:
        return asdict(self)


def laplace_bits(x: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """Bits of each value of ``x`` (a real-valued proxy of an integer) under a zero-mean Laplace
    of scale ``exp(log_scale)``, integrated over ``[x-0.5, x+0.5]``; stable in both regimes."""
    b = torch.exp(log_scale)
    a = x.abs()
    # tail branch (|x| >= 0.5): P = 0.5 exp(-(a-.5)/b) (1 - exp(-1/b))
    log_tail = -(a - 0.5) / b + math.log(0.5) + torch.log1p(-torch.exp(-1.0 / b)).clamp(min=-30)
    # center branch (|x| < 0.5): P = 1 - 0.5 exp(-(a+.5)/b) - 0.5 exp(-(.5-a)/b)
    center = 1.0 - 0.5 * torch.exp(-(a + 0.5) / b) - 0.5 * torch.exp(-(0.5 - a).clamp(min=0) / b)
    log_center = torch.log(center.clamp(min=1e-9))
    logp = torch.where(a >= 0.5, log_tail, log_center)
    return -logp.clamp(min=-40.0) / LN2


#: Checkerboard context: odd-parity latents are coded with a model chosen by the sum of |q|
#: over their 2*ndim face neighbours (all even parity, decoded first). Bucket edges:
CB_EDGES = (1, 2, 4, 7)          # buckets {0}, {1}, {2,3}, {4..6}, {7+}
CB_MIN_LATENTS = 512             # smaller levels are coded factorized (side bytes not worth it)
N_CTX = 1 + len(CB_EDGES) + 1    # model slots per level: even, then one per odd bucket


def context_index(q: torch.Tensor, spatial: int, use_cb: bool) -> torch.Tensor:
    """Model slot of every latent (long, same shape as integer tensor ``q``): 0 for the
    factorized/even ones, 1 + bucket for odd ones. The last ``spatial`` axes are the grid."""
    if not use_cb:
        return torch.zeros(q.shape, dtype=torch.long)
    grid_shape = q.shape[-spatial:]
    par = sum(torch.arange(n).reshape([-1 if i == k else 1 for i in range(spatial)])
              for k, n in enumerate(grid_shape)) % 2
    even = (par == 0)
    a = q.abs() * even
    pad = F.pad(a, [1, 1] * spatial)
    nsum = torch.zeros_like(a)
    for k in range(spatial):
        ax = q.ndim - spatial + k
        n = grid_shape[k]
        core = [slice(1, -1)] * spatial
        lo, hi = list(core), list(core)
        lo[k], hi[k] = slice(0, n), slice(2, n + 2)
        lead = [slice(None)] * (q.ndim - spatial)
        nsum = nsum + pad[tuple(lead + lo)] + pad[tuple(lead + hi)]
    bucket = torch.bucketize(nsum, torch.tensor(CB_EDGES, dtype=nsum.dtype), right=True)
    return torch.where(even, torch.zeros_like(bucket), 1 + bucket).long()


def _act(name: str):
    return {"relu": F.relu, "gelu": F.gelu, "sin": torch.sin}[name]


class _GatherRows(torch.autograd.Function):
    """``src.index_select(0, index)`` whose backward is a gather too (no scatter-add): source row
    s receives ``sum_j grad[inverse[j, s]]``, where ``inverse[j, s] == len(index)`` means none."""

    @staticmethod
    def forward(ctx, src, index, inverse):
        ctx.save_for_backward(inverse)
        return src.index_select(0, index)

    @staticmethod
    def backward(ctx, grad):
        (inverse,) = ctx.saved_tensors
        padded = torch.cat([grad, grad.new_zeros(1, grad.shape[1])])
        out = padded.index_select(0, inverse[0])
        for j in range(1, inverse.shape[0]):
            out = out + padded.index_select(0, inverse[j])
        return out, None, None


def region_coords(shape, region=None) -> torch.Tensor:
    """(B, ndim) coordinates in [-1, 1] (napari_moec.sampling convention) of a region."""
    region = region or [(0, n, 1) for n in shape]
    axes = [torch.arange(*r, dtype=torch.float64) * (2.0 / (n - 1)) - 1.0 if n > 1
            else torch.zeros(len(range(*r)), dtype=torch.float64)
            for n, r in zip(shape, region)]
    grid = torch.meshgrid(*axes, indexing="ij")
    return torch.stack([g.reshape(-1) for g in grid], dim=1).float()


class LatentGrids(nn.Module):
    """The L integer-valued latent grids (float parameters during training)."""

    def __init__(self, cfg: GridConfig, init_std: float = 0.0) -> None:
        super().__init__()
        self.cfg = cfg
        self.shapes = cfg.latent_shapes
        self.spatial = len(cfg.shape)
        self.latents = nn.ParameterList(
            [nn.Parameter(torch.randn(s) * init_std) for s in self.shapes])
        self.use_cb = [cfg.context == "cb" and math.prod(s) >= CB_MIN_LATENTS
                       for s in self.shapes]
        # Rate model: Laplace log-scales per level and context slot (training only; the file
        # stores one model byte per (level, slot) chosen on the real integers).
        self.log_scale = nn.Parameter(torch.zeros(len(self.shapes), N_CTX))

    def contexts(self) -> list[torch.Tensor]:
        with torch.no_grad():
            return [context_index(torch.round(y), self.spatial, cb)
                    for y, cb in zip(self.latents, self.use_cb)]

    def quantized(self, mode: str) -> list[torch.Tensor]:
        """Latents as the synthesis sees them: 'none', 'noise' (+U(-.5,.5)), 'ste' (round with
        straight-through gradient) or 'hard' (rounded, no gradient)."""
        out = []
        for y in self.latents:
            if mode == "none":
                out.append(y)
            elif mode == "noise":
                out.append(y + torch.rand_like(y) - 0.5)
            elif mode == "ste":
                out.append(y + (torch.round(y) - y).detach())
            elif mode == "hard":
                out.append(torch.round(y).detach())
            else:
                raise ValueError(mode)
        return out

    def rate_bits(self, values: list[torch.Tensor], ctx: list[torch.Tensor]) -> torch.Tensor:
        """Differentiable bits of ``values`` (noisy latents) under the context models."""
        total = 0.0
        for lvl, (v, c) in enumerate(zip(values, ctx)):
            total = total + laplace_bits(v, self.log_scale[lvl][c]).sum()
        return total

    @torch.no_grad()
    def hard_bits(self, ctx: list[torch.Tensor] | None = None) -> float:
        """Bits of the rounded latents under the learned models (~ the coder's)."""
        ctx = ctx if ctx is not None else self.contexts()
        return float(self.rate_bits([torch.round(y) for y in self.latents], ctx))

    def features(self, grids: list[torch.Tensor], mats) -> torch.Tensor:
        """(B, L) features of the voxels selected by ``mats`` (interp.axis_mats), or
        (B, n, L) with one grid set per expert."""
        if self.cfg.grid_per_expert:
            n = self.cfg.num_experts
            cols = [upsample(g, [None] + list(m)).reshape(n, -1).t() for g, m in zip(grids, mats)]
            return torch.stack(cols, dim=2)
        cols = [upsample(g, m).reshape(-1) for g, m in zip(grids, mats)]
        return torch.stack(cols, dim=1)


class MoESynthesis(nn.Module):
    """Router + ``n`` MLP experts (stacked weights) + shared linear decoder."""

    def __init__(self, cfg: GridConfig) -> None:
        super().__init__()
        self.cfg = cfg
        n, h, L = cfg.num_experts, cfg.hidden, cfg.num_levels
        self.act = _act(cfg.act)
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        fan_in = L
        for _ in range(cfg.expert_layers):
            bound = 1.0 / math.sqrt(fan_in)
            self.weights.append(nn.Parameter(torch.empty(n, fan_in, h).uniform_(-bound, bound)))
            self.biases.append(nn.Parameter(torch.empty(n, 1, h).uniform_(-bound, bound)))
            fan_in = h
        self.decoder = nn.Linear(h, 1)
        with torch.no_grad():
            self.decoder.weight.mul_(0.5)
            self.decoder.bias.zero_()
        if n > 1:
            gin = (L * n if cfg.grid_per_expert else L) + (len(cfg.shape) if cfg.gate_coords else 0)
            self.gate = nn.Sequential(nn.Linear(gin, cfg.gate_hidden), nn.ReLU(),
                                      nn.Linear(cfg.gate_hidden, n))
        else:
            self.gate = None

    def _expert(self, e: int, x: torch.Tensor) -> torch.Tensor:
        for w, b in zip(self.weights, self.biases):
            x = self.act(torch.addmm(b[e], x, w[e]))
        return x

    def _gate_input(self, f: torch.Tensor, coords: torch.Tensor | None) -> torch.Tensor:
        g = f.reshape(f.shape[0], -1)
        if self.cfg.gate_coords:
            g = torch.cat([coords, g], dim=1)
        return g

    def forward(self, f: torch.Tensor, coords: torch.Tensor | None = None,
                route_frozen: bool = False):
        """Returns value (B,), balance loss, load (n,), top-1 expert (B,).

        ``f``: (B, L) shared features, or (B, n, L) with per-expert grids (design b).
        The shared linear decoder is applied inside each expert's slice (it commutes with the
        gate-weighted sum), so only one scalar per assignment is scattered back.
        """
        cfg = self.cfg
        B = f.shape[0]
        wd, bd = self.decoder.weight, self.decoder.bias
        if self.gate is None:
            z = self._expert(0, f[:, 0] if f.ndim == 3 else f)
            value = (z @ wd.t())[:, 0] + bd
            zero = torch.zeros(B, dtype=torch.long)
            return value, value.new_ones(()), value.new_ones(1), zero
        g_in = self._gate_input(f, coords)
        logits = self.gate(g_in.detach() if route_frozen else g_in)
        # Softmax/top-k/bincount written out: torch's CPU kernels for a last dim of 2-8 cost
        # more than the experts themselves (profiled: softmax 130 ms for 262k x 2).
        z = logits - logits.max(dim=-1, keepdim=True).values.detach()
        ez = torch.exp(z)
        probs = ez / ez.sum(dim=-1, keepdim=True)
        k, n = cfg.top_k, cfg.num_experts
        if k == 1:
            weight, index = probs.max(dim=-1, keepdim=True)
        else:
            weight, index = torch.topk(probs, k, dim=-1)
            weight = weight / weight.sum(dim=-1, keepdim=True)
        top1 = index[:, 0]
        # Dispatch (counting sort by expert): assignments are choice-major (k*B,).
        flat_e = index.t().reshape(-1)
        flat_v = torch.arange(B).repeat(k)
        picks = [torch.nonzero(flat_e == e)[:, 0] for e in range(n)]
        order = torch.cat(picks)
        sizes = [int(p.numel()) for p in picks]
        if k == 1:
            counts = torch.tensor(sizes, dtype=probs.dtype)
        else:
            counts = torch.stack([(top1 == e).sum() for e in range(n)]).to(probs.dtype)
        aux = n / float(B) ** 2 * torch.sum(counts * probs.sum(dim=0))
        M = order.numel()
        position = torch.empty(M, dtype=torch.long)
        position[order] = torch.arange(M)
        if f.ndim == 3:  # design (b): expert e reads its own grids' features, row v*n+e
            src = f.reshape(B * n, -1)
            rows = flat_v * n + flat_e
            inverse = torch.full((1, B * n), M, dtype=torch.long)
            inverse[0, rows] = position
            xs = _GatherRows.apply(src, rows[order], inverse)
        else:
            xs = _GatherRows.apply(f, flat_v[order], position.view(k, B))
        outs, pos = [], 0
        for e, size in enumerate(sizes):
            if size:
                outs.append(self._expert(e, xs[pos:pos + size]) @ wd.t())
            pos += size
        y = torch.cat(outs)[:, 0] * weight.t().reshape(-1)[order]
        value = torch.zeros(B).index_add(0, flat_v[order], y) + bd
        return value, aux, counts / B, top1

    @torch.no_grad()
    def labels(self, f: torch.Tensor, coords: torch.Tensor | None = None) -> torch.Tensor:
        """Top-1 expert of every voxel: the partition shown as a Labels layer."""
        if self.gate is None:
            return torch.zeros(f.shape[0], dtype=torch.long)
        return torch.argmax(self.gate(self._gate_input(f, coords)), dim=-1)

    def mlp_tensors(self) -> list[tuple[str, torch.Tensor]]:
        """The stored MLP tensors, in file order."""
        return [(n, p) for n, p in self.named_parameters()]


class SirenSynthesis(nn.Module):
    """Design (c): the product's MoE SIREN (napari_moec.families.siren.moe.MoESiren, unchanged) whose first
    sine layer reads ``[coords, grid features]`` instead of the coordinates alone."""

    def __init__(self, cfg: GridConfig) -> None:
        super().__init__()
        from napari_moec.budget import first_layer_w0
        from napari_moec.config import ModelConfig
        from napari_moec.families.siren.moe import MoESiren
        mc = ModelConfig(in_features=len(cfg.shape), hidden_features=cfg.hidden,
                         num_experts=cfg.num_experts, top_k=cfg.top_k,
                         expert_layers=cfg.expert_layers, gate_hidden=cfg.gate_hidden,
                         w0=30.0, w0_first=first_layer_w0(cfg.hidden))
        object.__setattr__(mc, "in_features", len(cfg.shape) + cfg.num_levels)  # prototype
        self.net = MoESiren(mc)

    @property
    def gate(self):  # not a registered submodule: the state dict names it once, as net.gate
        return self.net.gate

    def forward(self, f, coords=None, route_frozen: bool = False, capacity_factor=None):
        out = self.net(torch.cat([coords, f], dim=1), capacity_factor)
        top1 = torch.zeros(f.shape[0], dtype=torch.long)
        return out.value[:, 0], out.aux_loss, out.load, top1

    @torch.no_grad()
    def labels(self, f, coords=None):
        return self.net.expert_labels(torch.cat([coords, f], dim=1))


class GridMoE(nn.Module):
    def __init__(self, cfg: GridConfig, init_std: float = 0.0) -> None:
        super().__init__()
        self.cfg = cfg
        self.grids = LatentGrids(cfg, init_std)
        self.synth = SirenSynthesis(cfg) if cfg.synth == "siren" else MoESynthesis(cfg)

    def forward(self, mats, coords=None, mode: str = "noise", route_frozen: bool = False,
                latents: list[torch.Tensor] | None = None):
        lat = latents if latents is not None else self.grids.quantized(mode)
        f = self.grids.features(lat, mats)
        return self.synth(f, coords, route_frozen)

    def latent_count(self) -> int:
        return sum(math.prod(s) for s in self.grids.shapes)

    def mlp_count(self) -> int:
        return sum(p.numel() for p in self.synth.parameters())
