"""Absolute chunks of a correction stream (version 3): the data coded by multilevel
interpolation of its own decoded values, for the chunks where the network does not help.

At tight bounds (1-2 % of the range) a network of a few kilobytes predicts worse than the
data's decoded neighbours do: its residual is dense and noisy, while the data itself is
smooth in the air of a scan and around its edges. There an *absolute* chunk ignores the
network (as an anchored voxel does, :mod:`napari_moec.correction`) and is coded as SZ3 codes
a volume (Liang et al., "SZ3", IEEE TBD 2022; Zhao et al., ICDE 2021):

* the chunk's first value: ``e = rint((x - lo) / s)``, decoded ``v = lo + s e``;
* then, for ``h`` = top/2, .., 2, 1 (top the smallest power of two >= the chunk's longest
  edge) and for each axis in turn, every position whose coordinate on that axis is an odd
  multiple of ``h`` (the axes before it on multiples of ``h``, the axes after on multiples of
  ``2h``: all decoded by then) is predicted from the decoded values ``h`` away on that axis,
  ``p = (v_L + v_R) * 0.5`` (``v_R = v_L`` past the chunk's end), and coded as
  ``e = rint((x - p) / s)``, decoded ``v = p + s e``.

Every decoded value is within ``s / 2`` of the original, as the network chunks' are, so the
bound proof of :mod:`napari_moec.correction` holds unchanged (readers clip, round and cast
``v`` as they do ``clip(y) + s q``). The lattice is shifted to each prediction (not fixed at
``lo + s Z``): a prediction half-way between two lattice points would split its mass over
both, and the shifted lattice codes 4-19 % fewer bytes on the shared volumes at 1-2 % bounds.
The recurrence uses only IEEE additions and multiplications in a fixed order, so every
platform decodes the same ``v`` bit for bit. The codes ``e`` are coded as the network chunks
code ``q`` (significance, magnitude class, sign, low bits;
:func:`napari_moec.correction_chunks._encode_group`).

Contexts, from what is decoded: the *activity* ``A`` = 0 if ``rint(|v_L - v_R| / s)`` is 0,
else ``min(1 + floor(log2 of it), 5)`` (smooth regions predict well, edges do not); the
*surprise* ``S`` = ``min(max(|e_L|, |e_R|), 3)``, the larger of the two neighbours' own codes
(0 for the first value: noise and texture persist); the level ``l = min(log2 h, 3)``. A
pass's targets are coded in two checkerboard halves over the two other axes: the second
half's surprise also takes the codes of its (up to four) neighbours in the first half (2-6 %
fewer bytes on the shared volumes at 1-2 %).
Significance row ``24 l + 4 A + S``, class row ``4 A + S`` (96 and 24 rows: a class row costs
K words, a significance row one byte), sign row ``sign(e_L + e_R) + 1``; the first value uses
the last row of each table. Linear, not cubic, interpolation: on the shared volumes cubic
(SZ3's default) coded 3-6 % more (the cubic's negative taps amplify noise).

Every half-pass decodes with one vectorised call, so a 64^3 chunk is 37 calls. The writer
picks per chunk whichever of the two codings is smaller
(:func:`napari_moec.correction_codec.encode_chunks`).
"""

from __future__ import annotations

from collections.abc import Iterator

import constriction
import numpy as np

from .correction_chunks import Tables, _decode_group, _encode_group, magnitude_class
from .errors import MoecFormatError

__all__ = ["ROWS", "decode", "encode", "groups", "passes"]

_LEVELS, _ACTIVITIES, _SURPRISES = 4, 6, 4
_CONTEXTS = _LEVELS * _ACTIVITIES * _SURPRISES
_CLASS_CONTEXTS = _ACTIVITIES * _SURPRISES
#: Table rows (significance, class, sign); the last row of each is the chunk's first value's.
ROWS = (_CONTEXTS + 1, _CLASS_CONTEXTS + 1, 4)


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


class _Pass:
    """One pass's view of the decoded values (and of the codes ``coded`` so far): the
    prediction of its targets and the table rows of its two halves.

    A pass's targets form a grid over the two other axes; its checkerboard halves are coded
    one after the other, and the second half's surprise also sees the codes of its (up to
    four) neighbours in that grid, all in the first half: noise is local."""

    def __init__(self, values, coded, axis: int, h: int, targets, step: float) -> None:
        n = values.shape[axis]
        positions = np.arange(h, n, 2 * h)
        after = np.where(positions + h < n, positions + h, positions - h)
        left, right = list(targets), list(targets)
        left[axis], right[axis] = positions - h, after
        left, right = tuple(left), tuple(right)
        self.axis = axis
        self.prediction = (values[left] + values[right]) * 0.5
        spread = np.rint(np.abs(values[left] - values[right]) / step).astype(np.int64)
        self.activity = np.zeros(spread.shape, np.int32)
        moving = spread > 0
        self.activity[moving] = np.minimum(magnitude_class(spread[moving]) + 1, _ACTIVITIES - 1)
        self.seen = np.maximum(np.abs(coded[left]), np.abs(coded[right]))
        self.level = min(int(h).bit_length() - 1, _LEVELS - 1)
        self.sign = (np.sign(coded[left] + coded[right]) + 1).astype(np.int32)
        others = [np.arange(k) for a, k in enumerate(spread.shape) if a != axis]
        parity = np.add.outer(*others) % 2 == 0
        self.first = np.expand_dims(parity, axis) & np.ones(spread.shape, bool)

    def rows(self, half: np.ndarray, seen: np.ndarray):
        """Table rows (significance, class, sign) of the targets in ``half``."""
        seen = np.minimum(seen[half], _SURPRISES - 1).astype(np.int32)
        near = self.activity[half] * _SURPRISES + seen
        return self.level * _CLASS_CONTEXTS + near, near, self.sign[half]

    def second_seen(self, first_codes: np.ndarray) -> np.ndarray:
        """The surprise of every target once the first half's codes are known (the rest 0)."""
        magnitude = np.abs(first_codes)
        pad = [(0, 0) if a == self.axis else (1, 1) for a in range(3)]
        padded = np.pad(magnitude, pad)
        near = self.seen.copy()
        for a in range(3):
            if a == self.axis:
                continue
            for shift in (0, 2):
                index = [slice(1, -1) if b != self.axis else slice(None) for b in range(3)]
                index[a] = slice(shift, shift + magnitude.shape[a])
                near = np.maximum(near, padded[tuple(index)])
        return near


def _first_rows() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return tuple(np.full(1, rows - 1, np.int32) for rows in ROWS)


def groups(original: np.ndarray, step: float, lo: float) -> list:
    """``(codes, sig, cls, sign)`` of every group of a block (D, H, W) of original values
    (float64), in decoding order; the encoder decodes as it goes, as a reader will."""
    values = np.empty(original.shape)
    coded = np.zeros(original.shape, np.int64)
    first = np.rint((original[0, 0, 0] - lo) / step)
    values[0, 0, 0] = lo + step * first
    out = [(np.array([int(first)], np.int64), *_first_rows())]
    for axis, h, targets in passes(original.shape):
        view = _Pass(values, coded, axis, h, targets, step)
        codes = np.rint((original[targets] - view.prediction) / step)
        values[targets] = view.prediction + step * codes
        codes = codes.astype(np.int64)
        coded[targets] = codes
        second = view.second_seen(np.where(view.first, codes, 0))
        out.append((codes[view.first], *view.rows(view.first, view.seen)))
        out.append((codes[~view.first], *view.rows(~view.first, second)))
    return out


def encode(parts: list, tables: Tables) -> bytes:
    """The ANS words of a block's :func:`groups`."""
    coder = constriction.stream.stack.AnsCoder()
    for codes, sig, cls, sign in reversed(parts):
        _encode_group(coder, codes, sig, cls, sign, tables)
    return coder.get_compressed().astype("<u4").tobytes()


def decode(
    words: bytes, shape: tuple[int, int, int], tables: Tables, step: float, lo: float, top: int
) -> np.ndarray:
    """A block's decoded values (D, H, W) float64 from its words; every code in ``-top..top``
    (the first in ``0..top``), which a valid writer never leaves.

    Raises
    ------
    MoecFormatError
        Trailing words or a code out of range (a corrupt chunk).
    """
    coder = constriction.stream.stack.AnsCoder(np.frombuffer(words, "<u4").astype(np.uint32))
    values = np.empty(shape)
    coded = np.zeros(shape, np.int64)
    first = int(_decode_group(coder, _first_rows(), tables)[0])
    if not 0 <= first <= top:
        raise MoecFormatError(f"correction chunk has an absolute code outside 0..{top}")
    values[0, 0, 0] = lo + step * first
    for axis, h, targets in passes(shape):
        view = _Pass(values, coded, axis, h, targets, step)
        codes = np.zeros(view.prediction.shape, np.int64)
        codes[view.first] = _decode_group(coder, view.rows(view.first, view.seen), tables)
        second = view.second_seen(codes)
        codes[~view.first] = _decode_group(coder, view.rows(~view.first, second), tables)
        if np.abs(codes).max(initial=0) > top:
            raise MoecFormatError(f"correction chunk has an absolute code outside -{top}..{top}")
        values[targets] = view.prediction + step * codes
        coded[targets] = codes
    if not coder.is_empty():
        raise MoecFormatError("correction chunk has trailing data")
    return values
