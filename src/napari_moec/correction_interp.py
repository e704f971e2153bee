"""Absolute chunks of a correction stream (version 3): the data's own codes, predicted by
multilevel interpolation, for the chunks where the network does not help.

At tight bounds (1-2 % of the range) a network of a few kilobytes predicts worse than the
data's decoded neighbours do: its residual ``q`` is dense and noisy, while the data itself
is smooth in the air of a scan and around its edges. There an *absolute* chunk ignores the
network (as an anchored voxel does, :mod:`napari_moec.correction`): it codes
``a = rint((x - lo) / step)`` and decodes ``lo + step * a``, so the bound holds by the same
quantizer whatever a reader predicts. The codes are predicted as SZ3 predicts values (Liang
et al., "SZ3", 2022; Zhao et al., ICDE 2021), but losslessly on integers, so writer and
reader agree exactly on every platform:

* the chunk's first code ``a[0, 0, 0]`` is coded alone (its own table row);
* then, for ``h`` = top/2, .., 2, 1 (top the smallest power of two >= the chunk's longest
  edge) and for each axis in turn, every position whose coordinate on that axis is an odd
  multiple of ``h`` (the axes before it on multiples of ``h``, the axes after on multiples of
  ``2h``: all decoded by then) is predicted from its two neighbours ``h`` away on that axis
  as ``floor((L + R) / 2)`` (``R = L`` past the chunk's end) and the difference
  ``d = a - prediction`` is coded as the network chunks code ``q`` (significance, magnitude
  class, sign, low bits; :func:`napari_moec.correction_chunks._encode_group`).

Contexts, from what is decoded: the *activity* ``A`` = 0 if ``L == R``, else
``min(1 + floor(log2 |L - R|), 5)`` (smooth regions predict well, edges do not); the
*surprise* ``S`` = ``min(max(|d_L|, |d_R|), 3)``, the larger of the two neighbours' own coded
differences (0 for the first code: noise and texture persist); the level ``l = min(log2 h,
3)``. Significance row ``24 l + 4 A + S``, class row ``4 A + S`` (96 and 24 rows: a class
row costs K words, a significance row one byte), sign row ``(L + R) mod 2`` (the floor
rounds an odd sum down: ``d`` is then more often positive); the first code uses the last row
of each table. Linear, not cubic, interpolation: on the shared volumes cubic (SZ3's default)
coded 3-6 % more (noise is amplified more by the cubic's negative taps).

Every pass decodes with one vectorised call per group, so a 64^3 chunk is 19 calls. The
writer picks per chunk whichever of the two codings is smaller
(:func:`napari_moec.correction_codec.encode_chunks`).
"""

from __future__ import annotations

from collections.abc import Iterator

import constriction
import numpy as np

from .correction_chunks import Tables, _decode_group, _encode_group, magnitude_class
from .errors import MoecFormatError

__all__ = ["ROWS", "decode", "encode", "groups", "passes"]

_LEVELS, _ACTIVITIES, _PARITIES, _SURPRISES = 4, 6, 2, 4
#: Table rows (significance, class, sign); the last row of each is the chunk's first code's.
_CONTEXTS = _LEVELS * _ACTIVITIES * _SURPRISES
_CLASS_CONTEXTS = _ACTIVITIES * _SURPRISES
ROWS = (_CONTEXTS + 1, _CLASS_CONTEXTS + 1, _PARITIES + 1)


def passes(shape: tuple[int, int, int]) -> Iterator[tuple[int, int, tuple[slice, ...]]]:
    """``(axis, h, targets)`` of every interpolation pass of a block, in decoding order."""
    top = 1
    while top < max(shape):
        top *= 2
    h = top // 2
    while h >= 1:
        for axis in range(3):
            targets = tuple(
                slice(0, None, h) if a < axis else slice(h, None, 2 * h) if a == axis
                else slice(0, None, 2 * h)
                for a in range(3)
            )  # fmt: skip
            yield axis, h, targets
        h //= 2


def _neighbours(block: np.ndarray, surprise: np.ndarray, axis: int, h: int, targets):
    """The decoded codes ``h`` before and after every target position along ``axis`` (the one
    before again past the chunk's end), and the larger of the two's surprises."""
    n = block.shape[axis]
    positions = np.arange(h, n, 2 * h)
    after = np.where(positions + h < n, positions + h, positions - h)
    left, right = list(targets), list(targets)
    left[axis], right[axis] = positions - h, after
    left, right = tuple(left), tuple(right)
    return block[left], block[right], np.maximum(surprise[left], surprise[right])


def _contexts(left: np.ndarray, right: np.ndarray, surprise: np.ndarray, h: int):
    """(prediction, significance row, class row, sign row) of the targets of a pass."""
    spread = np.abs(left - right)
    activity = np.zeros(spread.shape, np.int32)
    moving = spread > 0
    activity[moving] = np.minimum(magnitude_class(spread[moving]) + 1, _ACTIVITIES - 1)
    level = min(int(h).bit_length() - 1, _LEVELS - 1)
    near = activity * _SURPRISES + np.minimum(surprise, _SURPRISES - 1).astype(np.int32)
    total = left + right
    return total // 2, level * _CLASS_CONTEXTS + near, near, (total & 1).astype(np.int32)


def groups(block: np.ndarray):
    """``(values, sig, cls, sign)`` of every group of a block (D, H, W) int64, in decoding
    order (the encoder's view: every value known)."""
    first = np.zeros(1, np.int32)
    out = [(block[:1, :1, :1].ravel(), first + ROWS[0] - 1, first + ROWS[1] - 1,
            first + ROWS[2] - 1)]  # fmt: skip
    surprise = np.zeros(block.shape, np.int64)
    for axis, h, targets in passes(block.shape):
        prediction, sig, cls, sign = _contexts(*_neighbours(block, surprise, axis, h, targets), h)
        values = block[targets] - prediction
        surprise[targets] = np.abs(values)
        out.append((values.ravel(), sig.ravel(), cls.ravel(), sign.ravel()))
    return out


def encode(block: np.ndarray, tables: Tables) -> bytes:
    """The ANS words of a block's absolute codes (D, H, W) int64; b"" when all are 0."""
    if not block.any():
        return b""
    coder = constriction.stream.stack.AnsCoder()
    for values, sig, cls, sign in reversed(groups(block)):
        _encode_group(coder, values, sig, cls, sign, tables)
    return coder.get_compressed().astype("<u4").tobytes()


def decode(words: bytes, shape: tuple[int, int, int], tables: Tables, top: int) -> np.ndarray:
    """A block's absolute codes (D, H, W) int64 from its words; each in ``0..top``.

    Raises
    ------
    MoecFormatError
        Trailing words or a code outside ``0..top`` (a corrupt chunk).
    """
    coder = constriction.stream.stack.AnsCoder(np.frombuffer(words, "<u4").astype(np.uint32))
    block = np.zeros(shape, np.int64)
    first = np.zeros(1, np.int32)
    block[0, 0, 0] = _decode_group(
        coder, (first + ROWS[0] - 1, first + ROWS[1] - 1, first + ROWS[2] - 1), tables
    )[0]
    if not 0 <= block[0, 0, 0] <= top:
        raise MoecFormatError(f"correction chunk has an absolute code outside 0..{top}")
    surprise = np.zeros(shape, np.int64)
    for axis, h, targets in passes(shape):
        prediction, sig, cls, sign = _contexts(*_neighbours(block, surprise, axis, h, targets), h)
        values = _decode_group(coder, (sig.ravel(), cls.ravel(), sign.ravel()), tables)
        values = values.reshape(prediction.shape)
        block[targets] = prediction + values
        surprise[targets] = np.abs(values)
        # a corrupt chunk must not grow codes through later predictions
        if block[targets].min(initial=0) < 0 or block[targets].max(initial=0) > top:
            raise MoecFormatError(f"correction chunk has an absolute code outside 0..{top}")
    if not coder.is_empty():
        raise MoecFormatError("correction chunk has trailing data")
    return block
