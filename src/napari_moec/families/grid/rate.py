"""The rate term of the grid family's loss and the controller that lands it on the budget.

Rate proxy: ``-log2 P(y + u)`` with P a zero-mean Laplace of learned scale per (level,
context slot), integrated over the unit bin: the bits a coder with that model would spend
(``napari_moec.entropy`` then picks its own tables for the real file).

Loss: ``MSE + lam * 2 ln2 * D_ema * bits / N_latents``. ``lam`` is relative to high-rate
theory's slope ``dD/dR = -2 ln2 D`` per bit and latent, so one value fits every volume and
training stage (measured in the prototype: lam ~0.08 at 1.5 bits/latent, 0.3-1.5 at 0.3-0.6).

Control: dual ascent in log space on ``e = clamp(log(hard_bits / target), +-0.5)`` with a
derivative term that damps the latents' lag, ``log lam += eta e + kd (e - e_prev)``.
Anti-windup (new in the product): while the rounded latents have never reached the target,
lam may not fall below its start value. At initialisation every latent is 0, so the error sits
at its negative clamp; the prototype's lam fell 100-fold in the first few hundred steps, the
latents then overshot and the budget fit zeroed them again: the 1-2 dB checkpoint drops at the
smallest budgets (REPORT.md 9). The start value comes from the bits per latent the budget
allows; after ``free_after`` of the schedule the floor is lifted anyway, so a start value that
is too high cannot leave the budget under-filled. "Reached" counts only bits the trainer
trusts (``update(trusted=)``): before its first calibration against the real coder the
proxy's untrained scales overstate a zero latent's bits, which lifted the floor at the 4th
step of most runs at 256x and up (session 21).

Quality target (``--psnr``): :meth:`RateController.update_distortion` runs the same ascent on
``e = clamp(log(D* / D_hat), +-0.5)``, ``D_hat`` a running MSE of the rounded-latent model and
``D*`` the MSE the target PSNR allows: a model better than asked raises lam (fewer bits), a
worse one lowers it. The floor holds until ``D_hat`` first reaches ``D*``.
"""

from __future__ import annotations

import math

import torch

from .compiled import COMPILE_ENV, CompiledKernel

__all__ = [
    "COMPILE_ENV",
    "COMPILE_MIN_LATENTS",
    "RateController",
    "laplace_bits",
    "slot_laplace_bits",
    "start_lambda",
]

LN2 = math.log(2.0)
#: A level of at least this many latents gets its proxy from one compiled CPU kernel
#: (:func:`_kernel_for`): ~20 ns a latent a step saved, against a few seconds of compiling
#: once a process, so from here on it pays within the default 2000 steps.
COMPILE_MIN_LATENTS = 1 << 17


def laplace_bits(x: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """Bits of each ``x`` (a real proxy of an integer) under a zero-mean Laplace of scale
    ``exp(log_scale)``, integrated over ``[x - 0.5, x + 0.5]``; stable in both regimes."""
    b = torch.exp(log_scale)
    a = x.abs()
    # |x| >= 0.5: P = 0.5 exp(-(a - .5)/b) (1 - exp(-1/b))
    log_tail = -(a - 0.5) / b + math.log(0.5) + torch.log1p(-torch.exp(-1.0 / b)).clamp(min=-30)
    # |x| < 0.5: P = 1 - 0.5 exp(-(a + .5)/b) - 0.5 exp(-(.5 - a)/b)
    # (exponents clamped at -60: below it float32's exp returns denormals, ~30x slower on a
    # CPU, for terms that vanish beside 1 anyway; see _slot_bits)
    e1 = torch.exp((-(a + 0.5) / b).clamp(min=-60.0))
    e2 = torch.exp((-(0.5 - a).clamp(min=0) / b).clamp(min=-60.0))
    center = 1.0 - 0.5 * e1 - 0.5 * e2
    logp = torch.where(a >= 0.5, log_tail, torch.log(center.clamp(min=1e-9)))
    return -logp.clamp(min=-40.0) / LN2


def slot_laplace_bits(x: torch.Tensor, log_scale: torch.Tensor, slots: torch.Tensor):
    """``laplace_bits(x, log_scale[slots]).sum()`` in one pass (the same value and gradients).

    The rate term is over *every* latent at every step, and on a CPU it was about half of a
    step on volumes of a few million voxels (a tile profiled with py-spy: the proxy's forward
    twice, once for the loss and once for the controller's bits, and its ~20-node autograd
    graph). Here the scale's functions are computed once per slot, each branch is one
    expression, and the derivatives are formed with the value (only when a gradient is
    wanted), so the backward is a multiply. The scales' gradient is a weighted histogram of
    the slots, not plain indexing's accumulating ``index_put_``: on a GPU that sorts every
    latent's index to add into 6 entries, measured at 98 % of a 256³ volume's step on the
    first lease (560 of 574 ms in 5 steps, H200; benchmarks/grid_profile.py).
    """
    if torch.is_grad_enabled() and (x.requires_grad or log_scale.requires_grad):
        return _SlotLaplaceBits.apply(x, log_scale, slots)
    return _kernel_for(x)(x, log_scale, slots, want_x=False, want_scale=False)[0]


def _kernel_for(x: torch.Tensor):
    """:func:`_slot_bits`, or on a CPU for a level of ``COMPILE_MIN_LATENTS`` or more its
    compiled form (:data:`BITS_KERNEL`): the proxy's ~25 elementwise passes over every latent
    fused into one loop. Measured on the macaque at 256x (661,775 latents, 2 threads): the
    proxy's value and gradients 14.7 -> 2.0 ms for the finest level, a training step 34.2 ->
    20.0 ms (a step without the rate term: 14.0). Small levels, GPUs (whose step is
    launch-bound and measured there without it), ``NAPARI_MOEC_COMPILE=0`` and any failure to
    compile (no C++ compiler, an unsupported platform: one warning) keep the eager function."""
    if x.device.type != "cpu" or x.numel() < COMPILE_MIN_LATENTS or not BITS_KERNEL.usable():
        return _slot_bits
    return BITS_KERNEL


def _slot_bits(x, log_scale, slots, *, want_x: bool, want_scale: bool):
    """(total bits, d total / d x or None, d total / d log_scale or None). With ``b`` the
    slot's scale and ``a = |x|``: tail (a >= 1/2) ``ln P = -(a - 1/2)/b + ln(1/2) +
    ln(1 - e^(-1/b))``; centre ``P = 1 - (e^(-(a + 1/2)/b) + e^((a - 1/2)/b)) / 2``, evaluated
    at ``min(a, 1/2)`` so that neither exponential overflows; bits ``= -max(ln P, -40) / ln 2``
    as :func:`laplace_bits`, whose clamps cut the same gradients."""
    inv_b = torch.exp(-log_scale)  # per slot
    shift = torch.log1p(-torch.exp(-inv_b))
    shift_free = shift >= -30.0
    shift = shift.clamp(min=-30.0) + math.log(0.5)
    ib = inv_b[slots]
    a = x.abs()
    tail = a >= 0.5
    ac = a.clamp(max=0.5)
    # Exponents clamped at -60. Below about -87 float32's exp returns denormals, which a CPU
    # computes ~30x slower (1 M of them: 31 ms against 1 ms): a trained model's small slot
    # scales put most latents there, and a macaque tile's step went from 28 to ~80 ms late
    # in training. e^-60 is 9e-27: p is 1 and its derivatives 0 in float32 either way.
    e1 = torch.exp((-(ac + 0.5) * ib).clamp(min=-60.0))
    e2 = torch.exp(((ac - 0.5) * ib).clamp(min=-60.0))
    p = 1.0 - 0.5 * (e1 + e2)
    p_free = p >= 1e-9
    logp = torch.where(tail, shift[slots] - (a - 0.5) * ib, torch.log(p.clamp(min=1e-9)))
    total = (-logp.clamp(min=-40.0)).sum() / LN2
    if not (want_x or want_scale):
        return total, None, None
    # d(bits)/d(ln P), then d(ln P)/d(a) and d(ln P)/d(ln b) per element
    scale = torch.where(logp >= -40.0, -1.0 / LN2, 0.0)
    p_safe = torch.where(p_free, p, 1.0)
    grad_x = grad_scale = None
    if want_x:
        da = torch.where(tail, -ib, torch.where(p_free, 0.5 * ib * (e1 - e2) / p_safe, 0.0))
        grad_x = scale * da * torch.sign(x)
    if want_scale:
        d_shift = torch.where(shift_free, -inv_b / torch.expm1(inv_b), 0.0)  # per slot
        centre = -0.5 * ib * (e1 * (ac + 0.5) + e2 * (0.5 - ac)) / p_safe
        dlb = torch.where(tail, (a - 0.5) * ib + d_shift[slots], torch.where(p_free, centre, 0.0))
        grad_scale = torch.bincount(
            slots.reshape(-1), weights=(scale * dlb).reshape(-1), minlength=log_scale.shape[0]
        ).to(log_scale.dtype)
    return total, grad_x, grad_scale


#: The compiled proxy (:func:`_kernel_for`).
BITS_KERNEL = CompiledKernel(_slot_bits, "the rate kernel", "~1.7x slower a step on large volumes")


class _SlotLaplaceBits(torch.autograd.Function):
    """:func:`slot_laplace_bits` with its derivatives formed in the forward pass."""

    @staticmethod
    def forward(ctx, x, log_scale, slots):
        total, grad_x, grad_scale = _kernel_for(x)(
            x, log_scale, slots,
            want_x=ctx.needs_input_grad[0], want_scale=ctx.needs_input_grad[1],
        )  # fmt: skip
        ctx.save_for_backward(grad_x, grad_scale)
        return total

    @staticmethod
    def backward(ctx, grad):
        grad_x, grad_scale = ctx.saved_tensors
        return (
            None if grad_x is None else grad * grad_x,
            None if grad_scale is None else grad * grad_scale,
            None,
        )


def start_lambda(bits_per_latent: float, lam0: float = 0.08) -> float:
    """Start value from the bits per latent the budget allows (the prototype's fit of its
    measurements: 0.08 at 1.5 bits/latent, ~0.8 at 0.3)."""
    return min(10.0, lam0 * (1.5 / max(bits_per_latent, 0.02)) ** 1.45)


class RateController:
    """Adapts ``lam`` once per step toward a bit target (module docstring)."""

    def __init__(
        self, lam: float, eta: float = 0.03, kd: float = 0.5, free_after: float = 0.2
    ) -> None:
        self.lam = lam
        self.floor = lam
        self.eta, self.kd, self.free_after = eta, kd, free_after
        self.reached = False
        self._err_prev: float | None = None

    def update(
        self,
        hard_bits: float,
        target_bits: float,
        progress: float,
        steps: int = 1,
        trusted: bool = True,
    ) -> float:
        """Step toward ``target_bits`` (the budget's bits of the rounded latents), once for
        ``steps`` training steps (a trainer that reads the bits back every few steps).

        ``trusted``: whether ``hard_bits`` can tell that the target was reached (the
        anti-windup floor is lifted then). A trainer whose proxy has not yet been
        calibrated against the real coder passes False: at the start the proxy's untrained
        scales (1 a slot) price a zero latent at 1.36 bits, so below that many bits a latent
        (most budgets at 256x and up) the untrained proxy "reached" the target at the 4th
        step, the floor was lifted at once, and after the first calibration (the proxy
        overstating 2.3x) lam fell 40-fold before the latents grew into the budget: a 144³
        tile then overshot, zeroed up to 25,000 latents at every checkpoint and stored
        38.85 dB at 2,551 steps against 43.32 at 3,000 (docs/benchmarks.md, session 21)."""
        err = math.log(max(hard_bits, 1.0) / max(target_bits, 1.0))
        return self._ascend(err, progress, steps, trusted)

    def update_distortion(self, mse: float, target_mse: float, progress: float) -> float:
        """Step toward ``target_mse`` (a quality target): too good a model raises lam."""
        return self._ascend(math.log(max(target_mse, 1e-30) / max(mse, 1e-30)), progress)

    def _ascend(self, err: float, progress: float, steps: int = 1, trusted: bool = True) -> float:
        err = min(0.5, max(-0.5, err))
        self.reached = self.reached or (trusted and err >= 0.0)
        d_err = 0.0 if self._err_prev is None else err - self._err_prev
        self._err_prev = err
        lam = self.lam * math.exp(steps * self.eta * err + self.kd * d_err)
        if not self.reached and progress < self.free_after:
            lam = max(lam, self.floor)
        self.lam = min(max(lam, 1e-4), 100.0)
        return self.lam

    def weight(self, d_ref, n_latents: int):
        """Factor of the rate proxy's bits in the loss."""
        return self.lam * 2 * LN2 * d_ref / max(n_latents, 1)
