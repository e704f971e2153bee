"""Storing a trained grid model in a byte budget exactly: quantize, pack, and pick the best.

The training loop's rate control lands near the budget; this module makes the payload fit it
*exactly* (never over, little under):

1. for each network step (nominal int8 times 1, 1.5, 2, 3, preceded by 0.25 and 0.5 where
   their bits are cheap: :func:`network_steps_for`): pack with plain rounding;
2. if that is over the budget, two candidates: zero the ``k`` nonzero latents that cost the
   least error (:func:`quantize_latents`: a latent's squared rounding error added by zeroing
   it, times the voxels one latent of its level spans), with ``k`` found by bisection (~14
   packs of a few ms); and the finest coarser latent step ``s > 1`` that fits (bisection);
3. if the plain rounding is more than 3% under the budget, also try a finer step ``s < 1``;

then every candidate is decoded *from its bytes* (``evaluate``) and the best score wins. A
coarser network step stops the search as soon as it scores worse than the previous one.

Why both over-budget candidates, and why the level weight (session 22,
``benchmarks/research/fit_over_budget.py``): a 144³ tile of the 512³ store whose latents had
overshot its budget by 5-10 % stored 36.9 / 35.6 / 37.1 dB at steps 1,000 / 1,400 / 1,800
when the fit zeroed the latents of smallest ``|y|`` over all levels (a coarse level's small
latent, which spans up to 48³ voxels, went as early as a fine one's), 39.2 / 39.4 / 40.5
with the level weight, and 39.8 / 40.6 / 41.3 with a latent step of 1.07-1.13 (the plain
rounding, over the budget: 39.7 / 40.1 / 41.1).

:func:`fit_checkpoint` is the training checkpoint's cheap form: per network step the
payloads of :func:`fit_candidates` (one pack when the plain rounding fits, which the
controller aims at; else a few secant steps on the zeroed-latent count and on the latent
step; no finer latent step for slack), scored by ``evaluate`` (the trainer's fixed sample),
coarser network steps while they score better. Its files are real
and within the budget, a little under it at worst; the final fit still runs the whole
search above.

:func:`fit_quality` is the same search turned around for a quality target: the *smallest*
payload whose decoded PSNR (``psnr_of``: pack, decode, measure as a reader gets it) is at
least ``target``. Per network step it bisects the zeroed-latent count and a coarser latent
step from the plain rounding (or a finer latent step when the plain rounding falls short),
keeps the smallest payload that passes, and stops coarsening the network once that grows.
Every candidate it returns was decoded and measured, so the promise holds by construction;
the knobs are fine (one latent at a time), so the PSNR lands just above the target.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import numpy as np
import torch

from ...errors import TrainingError
from ...quantize import quantize
from .config import GridConfig
from .model import GridModel
from .payload import pack_payload

__all__ = [
    "FINE_NETWORK_STEPS",
    "NETWORK_PRECISION_SHARE",
    "NETWORK_STEPS",
    "FitResult",
    "fit_budget",
    "fit_candidates",
    "fit_checkpoint",
    "fit_quality",
    "network_steps_for",
    "pack_model",
    "quantize_latents",
    "quantize_weights",
]

NETWORK_STEPS = (1.0, 1.5, 2.0, 3.0)
#: Network steps finer than nominal int8 (int9, int10), tried first where their bytes are
#: cheap: at most ``NETWORK_PRECISION_SHARE`` of the payload (:func:`network_steps_for`).
FINE_NETWORK_STEPS = (0.25, 0.5)
NETWORK_PRECISION_SHARE = 0.01


def network_steps_for(cfg: GridConfig, limit: int) -> tuple[float, ...]:
    """The network steps a payload of ``cfg`` in ``limit`` bytes is fitted at, finest first:
    ``NETWORK_STEPS``, preceded by the finest of ``FINE_NETWORK_STEPS`` (and those coarser)
    whose extra bits over nominal int8 (``log2(1 / step)`` a weight) cost at most
    ``NETWORK_PRECISION_SHARE`` of ``limit``.

    Why. At high fidelity nominal int8 is what a file loses most to: the macaque at 256x,
    one network 16 wide, 5 minutes (``benchmarks/research/network_precision.py``; notes.md,
    session 29), its float network with the stored latents decoded 47.93 dB at the end of the
    run, the int8 network 44.72 (and anything from 44.7 to 47.5 at the checkpoints of the
    last 2,400 steps: the "jitter" of large volumes' checkpoints), the step 0.25 network
    47.91 for 108 more bytes (0.16 % of the payload). Where the budget is small the bytes
    are not cheap and the latents keep them.
    """
    for i, step in enumerate(FINE_NETWORK_STEPS):
        if cfg.network_weight_count * math.log2(1.0 / step) / 8 <= NETWORK_PRECISION_SHARE * limit:
            return (*FINE_NETWORK_STEPS[i:], *NETWORK_STEPS)
    return NETWORK_STEPS


@dataclass(frozen=True)
class FitResult:
    score: float  # higher is better (what ``evaluate`` returned)
    payload: bytes
    network_step: float
    latent_step: float
    zeroed: int  # nonzero latents set to 0 to fit


def quantize_latents(model: GridModel, zero_k: int = 0, step: float = 1.0) -> list[np.ndarray]:
    """Integers ``q = round(y / s)`` of every level, then the ``zero_k`` nonzero ones that
    cost the least error set to 0 (the fine rate knob): ranked by the squared error zeroing
    adds to a latent, ``y² - (y - q)²``, times the voxels one latent of its level spans (the
    decoder interpolates a latent into about that many voxels). Ranking by ``|y|`` alone
    zeroed coarse latents as early as fine ones and cost 2.3-3.8 dB (module docstring)."""
    step = float(np.float16(step))
    vals = [y.detach().cpu().double().numpy() / step for y in model.grids.latents]
    vals = model.grids.as_stored(vals)  # the latents no decoded voxel reads are stored as 0
    ints = [np.clip(np.rint(v), -32767, 32767).astype(np.int32) for v in vals]
    if zero_k > 0:
        voxels = float(np.prod(model.cfg.shape))
        cost = np.concatenate(
            [
                (q * (2.0 * v - q) * (voxels / v.size)).ravel()
                for v, q in zip(vals, ints, strict=True)
            ]
        )
        flat = np.concatenate([q.ravel() for q in ints])
        nonzero = np.flatnonzero(flat)
        flat[nonzero[np.argsort(cost[nonzero], kind="stable")][:zero_k]] = 0
        ints = [
            p.reshape(q.shape)
            for p, q in zip(
                np.split(flat, np.cumsum([q.size for q in ints])[:-1]), ints, strict=True
            )
        ]
    return ints


def quantize_weights(model: GridModel, step: float = 1.0) -> tuple[list[np.ndarray], list[float]]:
    """(integers, float16-exact scales) of the stored network tensors, nominal int8 x ``step``."""
    ints, scales = [], []
    for p in model.synth.stored().values():
        q, s = quantize(p.detach().float().cpu(), 8, False, step)
        ints.append(q.numpy().astype(np.int32))
        scales.append(float(s.reshape(-1)[0]))
    return ints, scales


def pack_model(
    model: GridModel, network_step: float = 1.0, zero_k: int = 0, latent_step: float = 1.0
) -> bytes:
    """The payload of ``model`` at these knob settings."""
    weights, scales = quantize_weights(model, network_step)
    latent_step = float(np.float16(latent_step))
    return pack_payload(
        model.cfg, quantize_latents(model, zero_k, latent_step), weights, scales, latent_step
    )


def _bisect_int(fits: Callable[[int], bytes | None], hi: int, tol: int) -> tuple[int, bytes] | None:
    """Smallest k in [0, hi] (to ``tol``) whose payload fits, assuming ``fits(hi)`` does."""
    best = fits(hi)
    if best is None:
        return None
    lo, k = 0, hi
    while k - lo > tol:
        mid = (lo + k) // 2
        data = fits(mid)
        if data is None:
            lo = mid
        else:
            k, best = mid, data
    return k, best


def _coarser_step(
    model: GridModel, limit: int, ms: float, hi: float = 8.0, iters: int = 14
) -> tuple[bytes, float] | None:
    """(payload, step) of the finest latent step ``2**x``, ``0 < x <= hi`` to ``hi / 2**iters``,
    whose payload fits ``limit`` (bisection), or None when even ``2**hi`` does not."""
    lo, best = 0.0, None
    for _ in range(iters):
        mid = (lo + hi) / 2
        data = pack_model(model, ms, 0, 2.0**mid)
        if len(data) <= limit:
            hi, best = mid, (data, float(np.float16(2.0**mid)))
        else:
            lo = mid
    return best


def _step_near_limit(
    model: GridModel, limit: int, ms: float, plain: bytes, tries: int = 4
) -> tuple[bytes, float] | None:
    """(payload, step) of a coarser latent step ``2**x`` whose payload fits ``limit`` and
    fills at least 99 % of it, found cheaply: secant steps on ``x`` against the payload's
    bytes from the plain rounding (``x = 0``), the first guess ``x = 0.1``; a checkpoint's
    overshoot wants 1.03-1.15. After ``tries`` packs, the finest step seen that fits, else
    :func:`_coarser_step`'s bisection of steps up to 4 (None when even 4 was seen over)."""
    x0, b0 = 0.0, len(plain)
    x, best, over = 0.1, None, 0.0
    for _ in range(tries):
        step = float(np.float16(2.0**x))
        data = pack_model(model, ms, 0, step)
        if len(data) <= limit:
            if best is None or step < best[1]:
                best = (data, step)
            if len(data) >= 0.99 * limit:
                return best
        else:
            over = max(over, x)
        slope = (len(data) - b0) / (x - x0) if x != x0 else 0.0
        x0, b0 = x, len(data)
        nxt = x + (0.995 * limit - len(data)) / slope if slope < 0 else 2 * x
        x = min(2.0, max(nxt, over + 1e-3))
    if best is not None:
        return best
    return _coarser_step(model, limit, ms, hi=2.0, iters=8) if over < 2.0 else None


def _candidates(model: GridModel, limit: int, ms: float):
    """(payload, latent_step, zeroed) candidates for network step ``ms`` (module docstring)."""

    def fits(zero_k: int = 0, s: float = 1.0) -> bytes | None:
        data = pack_model(model, ms, zero_k, s)
        return data if len(data) <= limit else None

    plain = pack_model(model, ms)
    if len(plain) <= limit:
        yield plain, 1.0, 0
        if len(plain) < 0.97 * limit:  # slack: a finer latent step may spend it well
            lo, hi, fine = 0.5, 1.0, None
            for _ in range(6):
                mid = (lo + hi) / 2
                data = fits(0, mid)
                hi, fine, lo = (mid, (data, mid), lo) if data is not None else (hi, fine, mid)
            if fine is not None:
                yield fine[0], float(np.float16(fine[1])), 0
        return
    nonzero = sum(int(np.count_nonzero(q)) for q in quantize_latents(model))
    found = _bisect_int(lambda k: fits(k), nonzero // 2, max(1, nonzero // 2000))
    if found is not None:
        yield found[1], 1.0, found[0]
    coarse = _coarser_step(model, limit, ms)
    if coarse is not None:
        yield coarse[0], coarse[1], 0


def _zero_to_fit(model: GridModel, limit: int, ms: float, plain: bytes) -> tuple[int, bytes] | None:
    """(count, payload) of the fewest zeroed latents (:func:`quantize_latents`) that fit,
    found cheaply: the count comes from the bytes each zeroed latent saved so far (the first
    guess from the average bytes of a nonzero latent), with 10% more to land under the
    budget. After 4 tries (tiny payloads, whose size is not monotone in the count) a
    bisection above the last count still over the budget. None when zeroing half of the
    nonzero latents does not fit."""
    nonzero = sum(int(np.count_nonzero(q)) for q in quantize_latents(model))
    top = nonzero // 2
    over, k, size = 0, 0, len(plain)  # ``over``: the largest count known to be over
    for _ in range(4):
        per_latent = (len(plain) - size) / k if k else len(plain) / max(nonzero, 1)
        if per_latent <= 0:
            break
        k = min(top, k + int(np.ceil(1.1 * (size - limit) / per_latent)))
        data = pack_model(model, ms, k)
        if len(data) <= limit:
            return k, data
        over, size = max(over, k), len(data)
        if k >= top:
            break
    if over >= top:
        return None

    def fits(j: int) -> bytes | None:
        data = pack_model(model, ms, over + j)
        return data if len(data) <= limit else None

    found = _bisect_int(fits, top - over, max(1, nonzero // 500))
    return None if found is None else (over + found[0], found[1])


@torch.no_grad()
def fit_candidates(
    model: GridModel, limit: int, network_step: float = 1.0, plain: bytes | None = None
) -> Iterator[FitResult]:
    """The checkpoint's payloads of at most ``limit`` bytes at ``network_step`` (module
    docstring), their ``score`` NaN (the caller scores them): the plain rounding when it
    fits, else the fewest zeroed latents that fit (:func:`_zero_to_fit`) and a coarser
    latent step that fits within 1 % of the budget (:func:`_step_near_limit`), else a
    latent step up to 256. Both, not the coarser step alone, which scored as well at two
    noise-phase checkpoints of the 512³ store's corner tile in half the packs: nothing says
    it does in the rounding phase, and six runs of the whole macaque as a store could not
    tell the two apart (46.07 / 46.25 dB at seeds 0 / 1 with the step alone, 46.66 / 46.53
    and 46.50 / 46.21 with both; docs/benchmarks/notes.md, session 22). The secant steps
    cost 0.59 / 0.29 CPU-s a checkpoint there (the bisection 0.88 at the first; a step
    16 ms, a checkpoint every 200 steps).
    Deterministic: the same weights give the same bytes. ``plain``: this model's plain
    rounding at ``network_step`` when the caller has packed it already (the trainer's rate
    calibration), so that the common case costs no pack. Nothing when nothing fits."""
    if plain is None:
        plain = pack_model(model, network_step)
    if len(plain) <= limit:
        yield FitResult(float("nan"), plain, network_step, 1.0, 0)
        return
    zeroed = _zero_to_fit(model, limit, network_step, plain)
    if zeroed is not None:
        yield FitResult(float("nan"), zeroed[1], network_step, 1.0, zeroed[0])
    coarse = _step_near_limit(model, limit, network_step, plain)
    if coarse is None and zeroed is None:
        coarse = _coarser_step(model, limit, network_step)
    if coarse is not None:
        yield FitResult(float("nan"), coarse[0], network_step, coarse[1], 0)


@torch.no_grad()
def fit_checkpoint(
    model: GridModel,
    limit: int,
    evaluate: Callable[[bytes], float],
    network_steps=NETWORK_STEPS,
    plain: bytes | None = None,
) -> FitResult:
    """The best-scoring of :func:`fit_candidates`'s payloads at the network steps, finest
    first (``plain``: the plain rounding at the first, if packed already), stopping at the
    first coarser step that scores worse, or after a step whose plain rounding fitted (a
    coarser network then only adds error: the checkpoint leaves slack unspent).

    Raises
    ------
    TrainingError
        When nothing fits (the budget is smaller than the network at its coarsest step).
    """
    best: FitResult | None = None
    for i, ms in enumerate(network_steps):
        fitted = fit_candidates(model, limit, ms, plain if i == 0 else None)
        scored = [replace(c, score=evaluate(c.payload)) for c in fitted]
        if not scored:
            continue
        result = max(scored, key=lambda r: r.score)
        if best is not None and result.score <= best.score:
            break
        best = result
        if result.zeroed == 0 and result.latent_step == 1.0:
            break
    if best is None:
        raise TrainingError(
            f"no grid payload fits {limit} bytes: the budget is too small for the network"
        )
    return best


@torch.no_grad()
def fit_budget(
    model: GridModel, limit: int, evaluate: Callable[[bytes], float], network_steps=NETWORK_STEPS
) -> FitResult:
    """The best-scoring payload of at most ``limit`` bytes (module docstring).

    Raises
    ------
    TrainingError
        When nothing fits (the budget is smaller than the network at its coarsest step).
    """
    results: list[FitResult] = []
    per_step: list[float] = []
    for ms in network_steps:
        scores = []
        for data, s, k in _candidates(model, limit, ms):
            assert len(data) <= limit
            results.append(FitResult(evaluate(data), data, ms, s, k))
            scores.append(results[-1].score)
        if scores:
            per_step.append(max(scores))
            if len(per_step) >= 2 and per_step[-1] < per_step[-2]:
                break
    if not results:
        raise TrainingError(
            f"no grid payload fits {limit} bytes: the budget is too small for the network"
        )
    return max(results, key=lambda r: r.score)


def _bisect_real(passes: Callable[[float], bytes | None], lo: float, hi: float, iters: int):
    """Largest x in [lo, hi] (``iters`` halvings) whose payload passes, assuming ``lo``
    passes and a larger x makes a smaller payload: (x, payload) or None."""
    best = None
    for _ in range(iters):
        mid = (lo + hi) / 2
        data = passes(mid)
        if data is None:
            hi = mid
        else:
            lo, best = mid, (mid, data)
    return best


def _quality_candidates(model: GridModel, limit: int, ms: float, ok: Callable[[bytes], bool]):
    """(payload, latent_step, zeroed) of network step ``ms`` that fit and pass ``ok``."""

    def fits(zero_k: int = 0, s: float = 1.0) -> bytes | None:
        data = pack_model(model, ms, zero_k, s)
        return data if len(data) <= limit else None

    def passes(zero_k: int = 0, s: float = 1.0) -> bytes | None:
        data = fits(zero_k, s)
        return data if data is not None and ok(data) else None

    first = pack_model(model, ms)
    plain = first if len(first) <= limit and ok(first) else None
    if len(first) > limit:
        # Over the byte cap (a quality target whose run left large latents): a finer step
        # only adds bytes, so zero the smallest latents until the payload fits (the fewest,
        # ``_bisect_int`` to one latent: no zeroing is over), and keep it if it still
        # reaches the target.
        nonzero = sum(int(np.count_nonzero(q)) for q in quantize_latents(model))
        least = _bisect_int(fits, nonzero, 1)
        if least is not None and ok(least[1]):  # then the most zeroed that still reaches it
            hi, data = least
            found = _bisect_real(lambda k: passes(int(k)), float(hi), float(nonzero), 11)
            yield (data, 1.0, hi) if found is None else (found[1], 1.0, int(found[0]))
        return
    if plain is None:  # short of the target: a finer latent step 2**-x,
        if passes(0, 0.25) is None:  # with the smallest x (coarsest step) that passes
            return
        lo, hi = 0.0, 2.0
        for _ in range(7):
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if passes(0, 2.0**-mid) is not None else (mid, hi)
        step = float(np.float16(2.0**-hi))
        data = passes(0, step)
        if data is not None:
            yield data, step, 0
        return
    yield plain, 1.0, 0
    nonzero = sum(int(np.count_nonzero(q)) for q in quantize_latents(model))
    found = _bisect_real(lambda k: passes(int(k)), 0.0, float(nonzero), 11)
    if found is not None:
        yield found[1], 1.0, int(found[0])
    coarse = _bisect_real(lambda x: passes(0, 2.0**x), 0.0, 2.0, 7)
    if coarse is not None:
        yield coarse[1], float(np.float16(2.0 ** coarse[0])), 0


@torch.no_grad()
def fit_quality(
    model: GridModel,
    limit: int,
    psnr_of: Callable[[bytes], float],
    target: float,
    network_steps=NETWORK_STEPS,
) -> FitResult:
    """The smallest payload of at most ``limit`` bytes whose ``psnr_of`` is >= ``target``
    (module docstring); its ``score`` is that PSNR.

    Raises
    ------
    TrainingError
        When no payload within ``limit`` reaches ``target`` (the best PSNR seen is named).
    """
    seen: dict[bytes, float] = {}

    def ok(data: bytes) -> bool:
        if data not in seen:
            seen[data] = psnr_of(data)
        return seen[data] >= target

    results: list[FitResult] = []
    sizes: list[int] = []
    for ms in network_steps:
        found = [
            FitResult(seen[d], d, ms, s, k) for d, s, k in _quality_candidates(model, limit, ms, ok)
        ]
        if not found:
            if results:
                break
            continue
        results.extend(found)
        sizes.append(min(len(r.payload) for r in found))
        if len(sizes) >= 2 and sizes[-1] >= sizes[-2]:
            break
    if not results:
        best = max(seen.values(), default=float("nan"))
        raise TrainingError(
            f"the target PSNR {target:g} dB was not reached within {limit} payload bytes "
            f"(best {best:.2f} dB): train longer, or allow more bytes (a lower ratio)"
        )
    return min(results, key=lambda r: (len(r.payload), -r.score))
