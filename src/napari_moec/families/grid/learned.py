"""The learned context model of the latent entropy model (``context="lin"``): torch-free
coding side, and the formulas the training proxy (``model.LatentGrids``) follows.

Decoding order is the checkerboard's (:mod:`.context`): per level, the even latents first
with one entropy model, then every odd latent, whose ``2 ndim`` face neighbours are all even
and already decoded. Where the checkerboard picks one of 5 stored models by a bucket of the
neighbours' ``sum |q|``, this model *predicts* each odd latent's distribution, as Cool-chic's
and C3's autoregressive models do, from three numbers per level stored in the payload::

    S = sum of the neighbours,  A = sum of |neighbours|        (integers; missing ones are 0)
    mean    mu = rint(alpha * S / (2 ndim)), clipped to [-64, 64]
    spread  j  = rint(beta + gamma * ell(A)), clipped to [-5, 126]
    q - mu is coded with the two-sided geometric model byte 1 + j of ``napari_moec.entropy``
    (j < 0: the 3 most peaked Gaussian models, byte 128 + (j + 5) // 2) at radius R + 64
    (``|q - mu| <= R + 64``; the clip keeps a hostile radius from doubling
    the tables a decoder builds)

``ell(a) = 4 (e - 1 + 2m - 1)`` where ``1 + a = m 2^e``, ``m`` in [0.5, 1) (Mitchell's
piecewise-linear log2, times 4 as the spreads are 4 per octave). Every step is exact or
correctly rounded in IEEE 754 (a float16 alpha times an integer below 2^40, one division,
``frexp``, multiples of 1/4), so a decoder on any machine gets the encoder's ``mu`` and ``j``.
The odd latents are coded in groups of equal ``j`` (ascending), each in C order: the decode
stays two vectorised passes per level, at most 127 coder calls, no per-symbol loop.

Why not a raster-order model (every latent conditioned on all earlier ones, Cool-chic)? Its
decoder is one sequential coder call per latent (~40 k on hipct 64x), a Python loop of
dependent steps, and a region decode needs the whole level decoded either way; this keeps the
context ordering of the checkerboard and measures what learning the distribution adds to it.

The parameters are *fitted by the encoder* to the integers it codes (the fewest bits over a
grid of float16-exact values: alpha least squares or 0, gamma in quarters from 0 to 4, beta
any integer spread), and *learned in training* by the rate proxy with the same formulas, so
the latents are shaped for the model the file will use.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from ... import entropy
from .context import CB_EDGES, CBC_SLOTS, N_SLOTS, even_mask, level_kind

__all__ = [
    "LIN_FLOATS",
    "MAX_SPREAD",
    "MEAN_LIMIT",
    "MIN_SPREAD",
    "decode_ops",
    "ell",
    "fit_level",
    "model_of",
    "neighbour_sums",
    "odd_groups",
    "predict",
]

#: Float16 numbers stored per level with a learned context: alpha, beta, gamma.
LIN_FLOATS = 3
#: Spread indices: 0..126 the geometric models (``entropy`` bytes 1..127); -5..-1 the most
#: peaked Gaussian ones, which code a zero in 0.29-0.45 bits where the most peaked geometric
#: one takes 0.58 (mostly-zero levels at 1024x: hipct spent ~2x the checkerboard's bits).
MAX_SPREAD = 126
MIN_SPREAD = -5
#: Largest predicted mean magnitude: residuals are coded at radius ``R + MEAN_LIMIT``.
MEAN_LIMIT = 64
_GAMMAS = np.arange(17) / 4.0


def neighbour_sums(values, even):
    """``(S, A)``: sums of the signed values and of ``|values|`` over the face neighbours,
    counting only ``even`` nodes (numpy or torch; the slicing of :func:`.context_slots`)."""
    a = values * even
    s_sum, a_sum = a * 0, a * 0
    mag = abs(a)
    for axis in range(a.ndim):
        lead = (slice(None),) * axis
        for dst, src in ((slice(1, None), slice(None, -1)), (slice(None, -1), slice(1, None))):
            s_sum[(*lead, dst)] += a[(*lead, src)]
            a_sum[(*lead, dst)] += mag[(*lead, src)]
    return s_sum, a_sum


def ell(a: np.ndarray) -> np.ndarray:
    """``4 log2(1 + a)`` by Mitchell's approximation, exact in binary floating point."""
    m, e = np.frexp(1.0 + np.asarray(a, dtype=np.float64))
    return 4.0 * ((e - 1) + (2.0 * m - 1.0))


def predict(params, s_sum, a_sum, ndim: int) -> tuple[np.ndarray, np.ndarray]:
    """Integer means and spread indices of odd latents from their neighbour sums."""
    alpha, beta, gamma = (float(p) for p in params)
    mu = np.rint(alpha * s_sum.astype(np.float64) / (2 * ndim))
    j = np.rint(beta + gamma * ell(a_sum))
    return (
        np.clip(mu, -MEAN_LIMIT, MEAN_LIMIT).astype(np.int64),
        np.clip(j, MIN_SPREAD, MAX_SPREAD).astype(np.int64),
    )


def odd_groups(j: np.ndarray, odd: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """``(spread index, mask)`` of the odd latents' coding groups, ascending ``j``."""
    return [(int(k), odd & (j == k)) for k in np.unique(j[odd])]


def model_of(j: int) -> int:
    """The ``entropy`` model byte of spread index ``j`` (module docstring)."""
    return 1 + j if j >= 0 else 128 + (j - MIN_SPREAD) // 2


@lru_cache(maxsize=4)
def _log_tables(radius: int) -> np.ndarray:
    """-log2 of the tables of spreads MIN_SPREAD..MAX_SPREAD (rows) at ``radius``."""
    js = range(MIN_SPREAD, MAX_SPREAD + 1)
    return -np.log2(np.stack([entropy.model_table(model_of(j), radius) for j in js]))


def fit_level(q: np.ndarray, radius: int) -> tuple[float, float, float]:
    """The (alpha, beta, gamma) that code the odd latents of level ``q`` in the fewest bits
    (module docstring), each float16-exact; ``radius`` bounds ``|q|``."""
    even = even_mask(q.shape)
    odd = ~even
    s_sum, a_sum = neighbour_sums(q.astype(np.int64), even)
    s, a, v = s_sum[odd], a_sum[odd], q[odd].astype(np.int64)
    x = s.astype(np.float64) / (2 * q.ndim)
    denom = float(x @ x)
    alphas = [0.0]
    if denom > 0:
        ls = float(np.float16(min(2.0, max(-2.0, float(x @ v) / denom))))
        if ls != 0.0:
            alphas.append(ls)
    r2 = radius + MEAN_LIMIT
    logs = _log_tables(r2)  # (127, 2 r2 + 1)
    levels, inverse = np.unique(a, return_inverse=True)
    base = _GAMMAS[:, None] * ell(levels)[None, :]  # (gammas, distinct A)
    betas = np.arange(MIN_SPREAD - math.ceil(base.max()) - 1, MAX_SPREAD + 1, dtype=np.float64)
    # row of the tables for every (gamma, beta, distinct A): the grid searched, in one array
    j = np.clip(np.rint(betas[None, :, None] + base[:, None, :]), MIN_SPREAD, MAX_SPREAD)
    j = j.astype(np.int64) - MIN_SPREAD
    rows = np.arange(levels.size)[None, None, :]
    best = (math.inf, 0.0, 0.0, 0.0)
    for alpha in alphas:
        mu, _ = predict((alpha, 0.0, 0.0), s, a, q.ndim)
        sym = v - mu + r2
        hist = np.bincount(inverse * (2 * r2 + 1) + sym, minlength=levels.size * (2 * r2 + 1))
        cost = hist.reshape(levels.size, 2 * r2 + 1).astype(np.float64) @ logs.T
        bits = cost[rows, j].sum(axis=2)  # (gammas, betas)
        g, b = np.unravel_index(int(np.argmin(bits)), bits.shape)
        if bits[g, b] < best[0]:
            best = (float(bits[g, b]), alpha, float(betas[b]), float(_GAMMAS[g]))
    return best[1], best[2], best[3]


def decode_ops(context: str, grid_shapes, latents=None, radius: int = 1) -> tuple[int, int]:
    """Work of entropy-decoding the latents beyond one symbol each: ``(arithmetic operations
    of the context computation, coder calls)``; benchmarks count, never time.

    Per odd latent of a context level, ``d = ndim``: checkerboard ``2d`` additions and 4
    comparisons (plus one ``abs`` per even latent), 6 coder calls a level; learned ``4d``
    additions (signed and absolute sums), 4 for the mean (multiply, divide, round, clip as
    2), 8 for the spread (add, frexp, 3 for the mantissa line, multiply-add, round, clip) and
    1 to add the mean back; its coder calls are 1 + the distinct spreads of the level (given
    the decoded integer ``latents`` and the payload's ``radius``: the encoder's fit is
    repeated), else the bound 1 + 127. Coarse contexts (``"cbc"``, a level with a coarser
    one): the checkerboard's, plus ``d`` additions and 4 comparisons per latent of the level
    (the coarser level's sums are formed on the whole grid) and 10 coder calls instead of 6.
    Levels without contexts: no operations, one call.
    """
    ops = calls = 0
    for i, g in enumerate(grid_shapes):
        g = tuple(g)
        n, d = math.prod(g), len(g)
        n_even = int(even_mask(g).sum())
        coarsest = i == len(grid_shapes) - 1
        kind = level_kind(context, g, coarsest)
        if kind in ("cb", "cbc"):
            ops += n_even + (n - n_even) * (2 * d + len(CB_EDGES))
            calls += N_SLOTS
            if kind == "cbc":
                ops += n * (d + len(CB_EDGES))
                calls += CBC_SLOTS - N_SLOTS
        elif kind == "lin":
            ops += n_even + (n - n_even) * (4 * d + 4 + 8 + 1)
            if latents is None:
                calls += 1 + MAX_SPREAD - MIN_SPREAD + 1
            else:
                q = latents[i]
                s_sum, a_sum = neighbour_sums(q.astype(np.int64), even_mask(g))
                _, j = predict(fit_level(q, radius), s_sum, a_sum, d)
                calls += 1 + len(odd_groups(j, ~even_mask(g)))
        else:
            calls += 1
    return ops, calls
