"""Entropy coding of quantized weights with constriction's ANS coder.

Why constriction: a maintained Rust range/ANS coder with near-optimal rates on small inputs
and no code table to store. Paper A3's Huffman coding *grew* the 1024x file because its table
cost more than it saved; here each tensor costs one byte of model description:

* ``0``: uniform over ``[-R, R]`` (plain fixed-length coding);
* ``1 + j`` (j < 127): two-sided geometric (Laplace-like), spread ``s_j``;
* ``128 + j``: discretised Gaussian, spread ``s_j``;

with ``s_j = 2^(j/4 - 2)``. The encoder picks, per tensor, the model with the fewest bits.
Probability tables use only +, -, *, / and sqrt (no exp/erf), which IEEE 754 rounds
identically everywhere, so a file decodes bit-exactly on any platform.
"""

from __future__ import annotations

import math
from functools import lru_cache

import constriction
import numpy as np

__all__ = ["choose_model", "decode", "encode", "model_table"]

_NUM_SPREADS = 127


def _spread(j: int) -> float:
    # 2^(j/4 - 2) via exact power-of-two scaling and two correctly rounded square roots.
    return math.sqrt(math.sqrt(2.0**j)) / 4.0


@lru_cache(maxsize=512)  # at most ~16 MB: rate control keeps radii below ~2048
def model_table(model: int, radius: int) -> np.ndarray:
    """Probabilities (float64, length 2R+1) of symbols -R..R under model byte ``model``.

    Cached (read-only arrays): the rate controller packs a file ~25 times at a few radii, and
    rebuilding the tables in Python each time held the GIL long enough to stall napari's
    event loop while a compression finished.
    """
    size = 2 * radius + 1
    if model == 0:
        table = np.full(size, 1.0 / size)
        table.flags.writeable = False
        return table
    family, j = divmod(model - 1, _NUM_SPREADS) if model < 128 else (1, model - 128)
    s = _spread(j)
    k = radius + 1
    if family == 0:  # geometric: w_k = r^k
        r = 1.0 - 1.0 / (1.0 + s)
        steps = np.full(k, r)
    else:  # Gaussian: w_k = r^(k^2), built as w_{k+1} = w_k * r^(2k+1)
        r = 1.0 - 1.0 / (2.0 * s * s + 1.0)
        steps = np.full(k, r * r)
        steps[0] = r
        steps = np.cumprod(steps)  # r^(2i+1), by sequential products
    steps[0] = 1.0
    half = np.cumprod(steps)  # sequential products: deterministic
    weights = np.concatenate([half[:0:-1], half])
    weights = np.maximum(weights, 1e-300)
    table = weights / math.fsum(weights.tolist())
    table.flags.writeable = False
    return table


@lru_cache(maxsize=32)  # one pack needs one entry per distinct tensor spread
def _candidates(j0: int, radius: int) -> tuple[tuple[int, ...], np.ndarray]:
    """Model bytes worth trying for a tensor of RMS spread ``~2^(j0/4 - 2)`` and their log2
    tables stacked as rows (so all candidates are scored with one matrix-vector product)."""
    spreads = range(max(0, j0 - 6), min(_NUM_SPREADS, j0 + 7))
    models = tuple(base + j for base in (1, 128) for j in spreads)
    logs = np.log2(np.stack([model_table(m, radius) for m in models]))
    logs.flags.writeable = False
    return models, logs


def choose_model(q: np.ndarray, radius: int) -> int:
    """The model byte that codes integers ``q`` (|q| <= radius) in the fewest bits."""
    symbols = q.ravel().astype(np.int64) + radius
    uniform_bits = symbols.size * math.log2(2 * radius + 1)
    spread = max(float(np.sqrt(np.mean(q.astype(np.float64) ** 2))), 0.25)
    models, logs = _candidates(round(4 * math.log2(4 * spread)), radius)
    counts = np.bincount(symbols, minlength=2 * radius + 1).astype(np.float64)
    used = np.flatnonzero(counts)
    bits = -(logs[:, used] @ counts[used])
    best = int(np.argmin(bits))  # the first of equals, as a sequential search would keep
    return models[best] if bits[best] < uniform_bits else 0


def _categorical(model: int, radius: int):
    return constriction.stream.model.Categorical(model_table(model, radius), perfect=False)


def encode(
    tensors: list[np.ndarray], models: list[int], radius: int, radii: list[int] | None = None
) -> bytes:
    """ANS-code integer tensors, each with its model byte; returns little-endian u32 words.

    ``radii`` gives each tensor its own radius (default: ``radius`` for all), for a context
    model that codes residuals in a wider range than the values (``families/grid/learned``).
    """
    coder = constriction.stream.stack.AnsCoder()
    radii = [radius] * len(tensors) if radii is None else radii
    for q, model, r in zip(reversed(tensors), reversed(models), reversed(radii), strict=True):
        symbols = (q.ravel().astype(np.int64) + r).astype(np.int32)
        coder.encode_reverse(symbols, _categorical(model, r))
    return coder.get_compressed().astype("<u4").tobytes()


def decode(data: bytes, counts: list[int], models: list[int], radius: int) -> list[np.ndarray]:
    """Inverse of :func:`encode`: flat int32 arrays of the given lengths.

    Raises ValueError when the stream cannot be decoded or is not fully consumed.
    """
    if len(data) % 4:
        raise ValueError(f"coded stream length {len(data)} is not a multiple of 4")
    words = np.frombuffer(data, dtype="<u4").astype(np.uint32)
    coder = constriction.stream.stack.AnsCoder(words)
    out = []
    for count, model in zip(counts, models, strict=True):
        symbols = coder.decode(_categorical(model, radius), count) if count else np.empty(0)
        out.append(symbols.astype(np.int32) - radius)
    if not coder.is_empty():
        raise ValueError("coded stream has trailing data")
    return out
