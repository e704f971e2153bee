"""Prototype training levers for napari-moec (time to quality on CPU).

Every function here is self-contained and written to be ported into
``napari_moec/training.py`` / ``nn/*.py``; each docstring says where it plugs in.
The network parameters and ``state_dict`` are the product's ``MoESiren`` ones: nothing here
changes the file format.
"""

from __future__ import annotations

import ctypes
import math

import torch
import torch.nn.functional as F

# ----------------------------------------------------------------------------------------
# 1. Throughput
# ----------------------------------------------------------------------------------------


def keep_heap(pad_bytes: int = 256 << 20) -> bool:
    """Stop glibc malloc from returning freed activations to the OS after every step.

    A training step allocates and frees ~10 MB of activations in ~3 MB blocks; glibc serves
    them with fresh ``mmap``s or trims the heap top, so every step page-faults ~1,500 times
    (measured with ``ru_minflt``): ~8% of a CPU step. Raising the mmap/trim thresholds keeps
    the memory in the heap. Same effect as ``MALLOC_MMAP_THRESHOLD_=1073741824
    MALLOC_TRIM_THRESHOLD_=4294967296 MALLOC_TOP_PAD_=268435456`` in the environment.
    Plug-in: call once at the start of ``Compressor.run`` (CPU device only). Returns False
    where glibc's ``mallopt`` is unavailable (macOS, Windows, musl): a no-op there.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
    ok = libc.mallopt(M_MMAP_THRESHOLD, 1 << 30)  # glibc caps it at 32 MiB on 64-bit
    ok &= libc.mallopt(M_TRIM_THRESHOLD, 1 << 31)
    ok &= libc.mallopt(M_TOP_PAD, pad_bytes)
    return bool(ok)


class _SineAddmm(torch.autograd.Function):
    """``sin(x @ (w0 W)^T + w0 b)`` for an nn.Linear weight ``W`` (out, in): a fused SineLayer.

    Autograd's version runs mul(W, w0), mul(b, w0), addmm, sin forward and cos, mul, mm, mm,
    sum, and two muls backward, allocating a fresh batch-sized tensor for ``cos`` and one for
    ``grad * cos``. Here the saved pre-activation ``z`` is turned into ``cos(z) * grad`` in
    place (it is needed for nothing else), so backward allocates no batch-sized temporary
    besides the input gradient.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, w0: float):
        ws = weight * w0
        z = torch.addmm(bias * w0, x, ws.t())
        ctx.save_for_backward(x, ws, z)
        ctx.w0 = w0
        return torch.sin(z)

    @staticmethod
    def backward(ctx, grad):
        x, ws, z = ctx.saved_tensors
        gz = z.cos_().mul_(grad)  # z is ours alone: reuse its memory
        gx = gz @ ws if ctx.needs_input_grad[0] else None
        gw = (gz.t() @ x).mul_(ctx.w0)
        gb = gz.sum(0).mul_(ctx.w0)
        return gx, gw, gb, None


class _SineBaddbmm(torch.autograd.Function):
    """``sin(x @ (w0 W) + w0 b)`` for stacked expert weights ``W`` (n, in, out), ``b`` (n, 1,
    out), ``x`` (n, C, in): one fused batched sine layer (see :class:`_SineAddmm`)."""

    @staticmethod
    def forward(ctx, x, weight, bias, w0: float):
        ws = weight * w0
        z = torch.baddbmm(bias * w0, x, ws)
        ctx.save_for_backward(x, ws, z)
        ctx.w0 = w0
        return torch.sin(z)

    @staticmethod
    def backward(ctx, grad):
        x, ws, z = ctx.saved_tensors
        gz = z.cos_().mul_(grad)
        gx = torch.bmm(gz, ws.transpose(1, 2)) if ctx.needs_input_grad[0] else None
        gw = torch.bmm(x.transpose(1, 2), gz).mul_(ctx.w0)
        gb = gz.sum(1, keepdim=True).mul_(ctx.w0)
        return gx, gw, gb, None


sine_addmm = _SineAddmm.apply
sine_baddbmm = _SineBaddbmm.apply


def small_softmax(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over a short last dim (2-8 experts) from exp/sum.

    ``torch.softmax`` on a (16384, 2) tensor took 0.8 ms forward + 0.2 ms backward on this
    CPU (it vectorises along the last dim, which is 2 long): 8% of a 256x step. The same
    function from elementwise ops costs ~0.1 ms.
    """
    e = torch.exp(logits - logits.detach().amax(dim=-1, keepdim=True))
    return e / e.sum(dim=-1, keepdim=True)


def fast_forward(model, coords: torch.Tensor, capacity_factor: float | None, *,
                 fused: bool = True, softmax=small_softmax, bf16: bool = False):
    # (fused=False keeps autograd's sin: the variant torch.compile traces best)
    """``MoESiren.forward`` computed with the fused sine layers and the small softmax.

    Same parameters, same function (up to float rounding; checked: 28.292 vs 28.293 dB file
    PSNR after 200 steps), same ``MoEOutput``. ``bf16`` runs the product forward under CPU
    autocast (matmuls *and* the sines then run in bf16); it was only micro-benchmarked, see
    REPORT.md (the casts eat the AMX gain at these widths), never trained with.
    Plug-in: the body of ``MoESiren.forward`` (training path); decoding can keep the old one.
    """
    from napari_moec.families.siren.moe import MoEOutput, dispatch_slots, gather_rows

    cfg = model.config
    batch = coords.shape[0]
    enc = model.encoder
    if bf16:
        return _bf16_forward(model, coords, capacity_factor)
    if fused:
        features = sine_addmm(coords, enc.linear.weight, enc.linear.bias, enc.w0)
    else:
        features = enc(coords)

    def experts(x):
        ex = model.experts
        for w, b in zip(ex.weights, ex.biases, strict=True):
            x = sine_baddbmm(x, w, b, ex.w0) if fused else torch.sin(
                torch.baddbmm(b * ex.w0, x, w * ex.w0))
        return x

    if model.gate is None:
        value = model.decoder(experts(features[None])[0])
        ones = torch.ones(batch, dtype=torch.bool, device=coords.device)
        return MoEOutput(value, value.new_ones(()), ones, value.new_ones(1))
    logits = model.gate(features)
    probs = softmax(logits)
    weight, expert_index = torch.topk(probs, cfg.top_k, dim=-1)
    if cfg.top_k > 1:
        weight = weight / weight.sum(dim=-1, keepdim=True)
    # one_hot counts instead of bincount: same numbers, static shapes (no torch.compile break)
    counts = F.one_hot(expert_index[:, 0], cfg.num_experts).sum(0).to(probs.dtype)
    aux = cfg.num_experts / float(batch) ** 2 * torch.sum(counts * probs.sum(dim=0))
    capacity = None
    if capacity_factor is not None:
        capacity = max(1, math.ceil(capacity_factor * cfg.top_k * batch / cfg.num_experts))
    slot, keep, capacity = dispatch_slots(expert_index, cfg.num_experts, capacity)
    k, n, slots = cfg.top_k, cfg.num_experts, cfg.num_experts * capacity
    device = coords.device
    position = torch.arange(k * batch, device=device)
    kept_slot = torch.where(keep, slot, slots)
    slot_position = torch.full((slots + 1,), k * batch, device=device)
    slot_position[kept_slot] = position
    slot_position = slot_position[:slots]
    slot_token = torch.where(slot_position < k * batch, slot_position % batch, 0)
    buffer = gather_rows(features, slot_token, kept_slot.view(k, batch))
    expert_out = experts(buffer.view(n, capacity, -1)).reshape(slots, -1)
    picked = gather_rows(expert_out, torch.where(keep, slot, 0), slot_position[None])
    wgt = weight.t() * keep.view(k, batch)
    combined = (picked.view(k, batch, -1) * wgt[..., None]).sum(dim=0)
    kept = keep.view(k, batch).any(dim=0)
    load = counts / batch
    return MoEOutput(model.decoder(combined), aux, kept, load)


def _bf16_forward(model, coords, capacity_factor):
    """The product forward with the sine layers' matmuls in bf16 (AMX), sin in fp32."""
    from napari_moec.families.siren.moe import MoEOutput

    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(coords, capacity_factor)
    return MoEOutput(out.value.float(), out.aux_loss.float(), out.kept, out.load)


# ----------------------------------------------------------------------------------------
# 2. Fewer steps: schedules and samplers
# ----------------------------------------------------------------------------------------


def exp_schedule(progress: float, peak: float, final_frac: float) -> float:
    """The product's schedule: ``peak * final_frac ** progress``."""
    return peak * final_frac**progress


def cosine_schedule(progress: float, peak: float, warmup: float = 0.02,
                    final_frac: float = 0.01) -> float:
    """Linear warm-up over the first ``warmup`` of the run, then cosine decay from ``peak``
    to ``peak * final_frac`` at ``progress`` = 1 (Cool-chic / C3 style).

    ``progress`` in [0, 1] is max(step / steps, seconds / time_limit), as in ``training.py``.
    Plug-in: replace ``lr = cfg.lr * cfg.lr_final**progress`` in ``Compressor._train``.
    """
    if warmup > 0 and progress < warmup:
        return peak * (progress / warmup)
    t = min(1.0, (progress - warmup) / max(1e-12, 1.0 - warmup))
    lo = peak * final_frac
    return lo + (peak - lo) * 0.5 * (1.0 + math.cos(math.pi * t))


def warmup_exp_schedule(progress: float, peak: float, warmup: float = 0.02,
                        final_frac: float = 0.01) -> float:
    """Linear warm-up over the first ``warmup`` of the run, then the product's exponential
    decay from ``peak`` to ``peak * final_frac`` at ``progress`` = 1.

    The warm-up is what makes a high peak (5e-3 and up) stable: without it the exponential
    schedule at 5e-3 diverged mid-run on hipct 64x (file PSNR 26.8 -> 21.0 dB at 45 s);
    the fast exponential decay is what the narrow (256x) networks need: a cosine from the same
    peak, which stays high for most of the run, lost 1.2-1.7 dB on ct_head 256x.
    Plug-in: replace ``lr = cfg.lr * cfg.lr_final**progress`` in ``Compressor._train``.
    """
    if warmup > 0 and progress < warmup:
        return peak * (progress / warmup)
    t = min(1.0, (progress - warmup) / max(1e-12, 1.0 - warmup))
    return peak * final_frac**t


class LossGuard:
    """Roll back and halve the learning rate when the training loss jumps.

    At high peak lr (5e-3) narrow networks (256x, width 9-20) sometimes lose several dB in a
    few steps: a routing jump (one expert takes 78% of the points, the other's partition is
    lost) or a dead-network collapse to ~20 dB, from which they never recover. The guard
    keeps an EMA of the training MSE (one host sync every ``every`` steps), snapshots model +
    optimizer every ``snapshot_every`` steps while the loss is healthy, and when the EMA
    exceeds ``ratio`` x its best, restores the snapshot and multiplies ``lr_scale`` by
    ``backoff``.

    Plug-in: in ``Compressor._train`` call ``guard.observe(step, mse)`` after
    ``optimizer.step()`` and multiply the scheduled lr by ``guard.lr_scale``. The product's
    best-state EMA (``report_every``) already syncs the loss every 10 steps; reuse it.
    """

    def __init__(self, model, optimizer, *, every: int = 25, snapshot_every: int = 250,
                 ratio: float = 2.0, backoff: float = 0.5, warm: int = 100):
        self.model, self.opt = model, optimizer
        self.every, self.snapshot_every, self.ratio = every, snapshot_every, ratio
        self.backoff, self.warm = backoff, warm
        self.ema = None
        self.best = math.inf
        self.snapshot = None
        self.lr_scale = 1.0
        self.rollbacks = []

    def _save(self):
        import copy
        self.snapshot = (copy.deepcopy(self.model.state_dict()),
                         copy.deepcopy(self.opt.state_dict()))

    def observe(self, step: int, mse: torch.Tensor) -> None:
        if step % self.every:
            return
        value = float(mse)
        if not math.isfinite(value):
            value = math.inf
        self.ema = value if self.ema is None else 0.7 * self.ema + 0.3 * value
        if step < self.warm:
            return
        if self.ema < self.best:
            self.best = self.ema
        if self.snapshot is not None and self.ema > self.ratio * self.best:
            self.model.load_state_dict(self.snapshot[0])
            self.opt.load_state_dict(self.snapshot[1])
            self.lr_scale *= self.backoff
            self.rollbacks.append(step)
            self.ema = self.best
            return
        if step % self.snapshot_every == 0 and self.ema <= 1.25 * self.best:
            self._save()


class UniformSampler:
    """The product's sampler: i.i.d. uniform voxel indices (``torch.randint``)."""

    def __init__(self, n: int, batch: int, generator: torch.Generator):
        self.n, self.batch, self.gen = n, batch, generator

    def sample(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        return torch.randint(self.n, (self.batch,), generator=self.gen), None

    def update(self, index: torch.Tensor, sq_err: torch.Tensor) -> None:
        pass


class PermSampler(UniformSampler):
    """Epoch-style sampling without replacement: consecutive slices of random permutations,
    so every voxel is seen once per ``n / batch`` steps (i.i.d. sampling misses 1/e of the
    voxels in an epoch's worth of steps)."""

    def __init__(self, n, batch, generator):
        super().__init__(n, batch, generator)
        self.perm = torch.randperm(n, generator=generator)
        self.pos = 0

    def sample(self):
        if self.pos + self.batch <= self.n:
            idx = self.perm[self.pos:self.pos + self.batch]
            self.pos += self.batch
            return idx, None
        head = self.perm[self.pos:]
        self.perm = torch.randperm(self.n, generator=self.gen)
        self.pos = self.batch - head.numel()
        return torch.cat([head, self.perm[:self.pos]]), None


class ErrorSampler(UniformSampler):
    """Error-driven importance sampling of voxels.

    Keeps a table of every voxel's last seen squared error, refreshed for free from the
    training batch's own forward pass (``update``). A batch draws ``uniform`` of its points
    uniformly and the rest with probability ∝ (error + floor), where floor = ``floor`` * mean
    error keeps every voxel reachable. With ``weighted`` the loss weights are
    ``1 / (n p_i)`` (normalised to mean 1), so the expected loss is the plain MSE; without,
    the sampler shifts the objective towards the hard voxels.

    Plug-in: in ``Compressor._train`` replace ``torch.randint`` by ``sampler.sample()``, pass
    the returned weights into the MSE, and call ``sampler.update(index, err.detach())``.
    Cost: one cumsum over the volume + a searchsorted of the batch per step (~1 ms at 262k
    voxels).
    """

    def __init__(self, n, batch, generator, *, uniform: float = 0.5, floor: float = 0.1,
                 weighted: bool = False, power: float = 1.0):
        super().__init__(n, batch, generator)
        self.err = torch.ones(n)
        self.uniform, self.floor, self.weighted, self.power = uniform, floor, weighted, power
        self.n_uni = int(round(batch * uniform))

    def sample(self):
        n_imp = self.batch - self.n_uni
        uni = torch.randint(self.n, (self.n_uni,), generator=self.gen)
        score = self.err if self.power == 1.0 else self.err.pow(self.power)
        score = score + self.floor * score.mean()
        cdf = torch.cumsum(score, 0)
        total = cdf[-1]
        u = torch.rand(n_imp, generator=self.gen) * total
        imp = torch.searchsorted(cdf, u).clamp_(max=self.n - 1)
        idx = torch.cat([uni, imp])
        if not self.weighted:
            return idx, None
        p = self.uniform / self.n + (1 - self.uniform) * score[idx] / total
        w = 1.0 / (self.n * p)
        return idx, w / w.mean()

    def update(self, index, sq_err):
        self.err.index_put_((index,), sq_err.float())


# ----------------------------------------------------------------------------------------
# 3. Quality per byte: rate-aware training, RDOQ
# ----------------------------------------------------------------------------------------


def quant_noise_params(model, step: float, bits: int = 8) -> dict:
    """Parameters with additive uniform noise ``U(-Δ/2, Δ/2)``, Δ = the per-tensor step the
    file will use (``max|w| / (2^(bits-1) - 1) * step``, ``step`` from the rate controller),
    with the gradient passing straight to the weights (Cool-chic/C3's "noise" proxy of
    quantization). Use with ``torch.func.functional_call``."""
    out = {}
    for name, p in model.named_parameters():
        delta = p.detach().abs().amax() / (2 ** (bits - 1) - 1) * step
        out[name] = p + (torch.rand_like(p) - 0.5) * delta
    return out


def laplace_rate_bits(model, step: float, bits: int = 8) -> torch.Tensor:
    """Differentiable rate proxy: bits of the weights quantized with the file's step under a
    per-tensor Laplace model (what ``entropy.choose_model``'s geometric family approximates).

    For a tensor quantized with step Δ and Laplace scale b = mean|w| (ML estimate), the
    expected code length per weight is ≈ log2(2 e b / Δ) bits when b >> Δ. Summed over all
    tensors. Adding ``lambda * rate / n_params`` to the loss pulls weights towards fewer
    bits, i.e. a finer step at the same bytes.
    """
    total = 0.0
    for p in model.parameters():
        delta = p.detach().abs().amax() / (2 ** (bits - 1) - 1) * step
        b = p.abs().mean().clamp_min(1e-12)
        per = torch.log2(2 * math.e * b / delta).clamp_min(0.0)
        total = total + per * p.numel()
    return total


def current_rate_step(header, state: dict, budget: int) -> float:
    """The rate controller's quantization-step multiplier for ``state`` (bisection on pack
    sizes, like ``Compressor._fit_budget``) without keeping the bytes."""
    from napari_moec.format import pack

    lo, hi = -4.0, 16.0
    if len(pack(header, state, 2.0**lo)) <= budget:
        return 2.0**lo
    for _ in range(14):
        mid = (lo + hi) / 2
        if len(pack(header, state, 2.0**mid)) <= budget:
            hi = mid
        else:
            lo = mid
    return 2.0**hi
