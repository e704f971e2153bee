"""The correction stream of ``--max-error``: byte layout and entropy coding of the integer codes.

:mod:`napari_moec.correction` decides *what* to code (integers ``q``, mostly 0, one per voxel:
the decoded value is ``clip(prediction) + step * q``); this module decides *how*. This
docstring is the byte-level specification. All integers little-endian::

    size        field
    1           u8  version (1)
    1           u8  dtype code: 0 uint8, 1 uint16, 2 int16, 3 float32
    1           u8  ndim, 3 or 4
    4 ndim      u32 shape, each >= 1; must equal the container's shape (and dtype)
    6           3 x u16 chunk edge along the last three axes, each 1..MAX_EDGE, product <=
                MAX_CHUNK_VOXELS (a leading 4th axis is chunked by 1)
    8           f64 max_error E, the promised bound (finite, > 0)
    8           f64 step s (finite, > 0)
    2 w         lo, hi: the clip range, in the dtype (w = its size); finite, lo <= hi
    41          u8 significance probabilities P(q != 0 | context), one per context
    3           u8 sign probabilities P(q < 0 | context)
    1           u8  K, number of magnitude classes, 0..MAX_CLASSES (0: every q is 0)
    8 K         4 x K u16 class frequencies, one row per class context (a zero row: uniform)
    varint      A, the number of anchored voxels (LEB128, as every varint here)
    varint x A  their C-order flat indices, each as the gap to the previous one minus 1
                (the first as the index itself); all inside the volume. An anchored voxel
                decodes as ``lo + s q``, whatever the prediction there (see correction)
    varint x n  per chunk, in C order over the chunk grid: its stream length in u32 words
                (LEB128, at most 5 bytes; 0 = every code of the chunk is 0)
    4 sum       the chunk streams, concatenated; together they end the stream exactly

A probability byte k (1..255) stands for ``(k/128)^2 / 2`` below 128 and
``1 - ((256-k)/128)^2 / 2`` from 128 (:func:`probability`): fine near 0 and 1, where the
contexts of a sparse stream live, and exact in IEEE arithmetic on every platform.

Chunks make a region cheap: the reader decodes only the chunks an ROI + stride touches (a
64^3 chunk is 262k codes), and a chunk whose codes are all 0 costs one index byte. Each chunk
is one constriction ANS stream (u32 words) holding, plane by plane along the third-last axis,
in decoding order:

1. the plane's significance flags ``q != 0``, one Bernoulli each, context ``0`` in the first
   plane of the chunk, else ``1 + 4 n + c`` with n (0..9) the nonzero codes in the 3x3
   neighbourhood of the same position in the previous plane and c its class context;
2. for the plane's nonzero codes (C order), the magnitude class ``floor(log2 |q|)`` with the
   categorical row of the class context: 0 if the previous plane's code at the same position
   is 0, else min(its class + 1, 3) (not coded when K = 1);
3. their signs, Bernoulli, context the sign of the previous plane's code there (-, 0, +);
4. the low ``class`` bits of each magnitude, uniform (as JPEG codes a category and its bits).

Errors of a smooth predictor cluster at edges and keep their sign across planes: on the shared
volumes these contexts take 10-50 % off an order-0 code of q (blurred stand-in predictions).
Contexts look back one plane only, so a plane decodes with a few vectorised calls. Every
number read sizes an allocation only after it is checked against these limits and the bytes
that remain; every failure raises :class:`~napari_moec.errors.MoecFormatError`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import constriction
import numpy as np

from . import varint
from .errors import MoecFormatError

__all__ = ["DTYPES", "MAX_CLASSES", "Stream", "decode_chunk", "encode_chunks", "parse"]

VERSION = 1
DTYPES = ("uint8", "uint16", "int16", "float32")
MAX_VOXELS = 1 << 40
MAX_EDGE = 1024
MAX_CHUNK_VOXELS = 1 << 22
#: Classes 0..23: |q| < 2^24, the largest alphabet constriction's Uniform takes for the low bits.
MAX_CLASSES = 24
#: Significance contexts: the first plane of a chunk, then 10 neighbour counts x 4 classes.
NUM_CONTEXTS = 41
#: Class and sign contexts: what the previous plane holds at the same position.
CLASS_CONTEXTS = 4
SIGN_CONTEXTS = 3
_FIXED = struct.Struct("<BBB")
_TAIL = struct.Struct("<3Hdd")
_MODEL = constriction.stream.model


def probability(k: np.ndarray) -> np.ndarray:
    """The probability a byte 1..255 stands for: quadratic near 0 and 1, where the contexts of
    a sparse stream live (3e-5 .. 1 - 3e-5); power-of-two divisions, so exact everywhere."""
    k = np.asarray(k, dtype=np.float64)
    low = (k / 128.0) ** 2 / 2.0
    high = 1.0 - ((256.0 - k) / 128.0) ** 2 / 2.0
    return np.where(k < 128, low, high)


_LEVELS = probability(np.arange(1, 256))


def probability_byte(p: np.ndarray) -> np.ndarray:
    """The byte (1..255) whose probability is nearest ``p``."""
    index = np.searchsorted(_LEVELS, p).clip(1, 254)
    below = np.abs(p - _LEVELS[index - 1]) <= np.abs(_LEVELS[index] - p)
    return (np.where(below, index - 1, index) + 1).astype(np.uint8)


@dataclass(frozen=True, eq=False)
class Stream:
    """A parsed correction stream: header fields, entropy models and the chunk index."""

    dtype: np.dtype
    shape: tuple[int, ...]
    chunk: tuple[int, ...]  # one edge per axis (1 on a leading 4th axis)
    max_error: float
    step: float
    lo: float
    hi: float
    significance: np.ndarray  # (NUM_CONTEXTS,) float64 P(q != 0)
    classes: np.ndarray  # (CLASS_CONTEXTS, K) float64 rows of class probabilities
    signs: np.ndarray  # (SIGN_CONTEXTS,) float64 P(q < 0)
    anchors: np.ndarray  # sorted int64 C-order flat indices of voxels coded against ``lo``
    offsets: np.ndarray  # (n_chunks + 1,) int64 byte offsets of the chunk streams in `data`
    data: bytes

    @property
    def grid(self) -> tuple[int, ...]:
        """Number of chunks along each axis."""
        return tuple(-(-n // c) for n, c in zip(self.shape, self.chunk, strict=True))


def full_chunk(edges: tuple[int, int, int], ndim: int) -> tuple[int, ...]:
    return (1,) * (ndim - 3) + tuple(edges)


def neighbour_count(flags: np.ndarray) -> np.ndarray:
    """Nonzero flags (0..9) in the 3x3 neighbourhood of each position of ``flags`` (..., H, W),
    counting positions outside the chunk as zero."""
    padded = np.pad(flags.astype(np.uint8), [(0, 0)] * (flags.ndim - 2) + [(1, 1), (1, 1)])
    h, w = flags.shape[-2:]
    out = np.zeros(flags.shape, np.uint8)
    for dy in range(3):
        for dx in range(3):
            out += padded[..., dy : dy + h, dx : dx + w]
    return out


def magnitude_class(magnitude: np.ndarray) -> np.ndarray:
    """``floor(log2 m)`` for integers m >= 1, exactly (frexp, not a rounded log)."""
    return (np.frexp(magnitude.astype(np.float64))[1] - 1).astype(np.int32)


def _previous_class(q: np.ndarray) -> np.ndarray:
    """Per position: 0 if the code is 0, else min(class + 1, 3), the context the next plane
    sees at the same position."""
    out = np.zeros(q.shape, np.int32)
    nonzero = q != 0
    out[nonzero] = np.minimum(magnitude_class(np.abs(q[nonzero])) + 1, CLASS_CONTEXTS - 1)
    return out


def _contexts(planes: np.ndarray):
    """Significance, class and sign contexts of every code of a chunk's planes (D, H, W); the
    decoder rebuilds the same ones plane by plane from what it has decoded."""
    nonzero = planes != 0
    shape = planes.shape
    sig = np.zeros(shape, np.int32)
    cls = np.zeros(shape, np.int32)
    sign = np.ones(shape, np.int32)
    if shape[0] > 1:
        cls[1:] = _previous_class(planes[:-1])
        sig[1:] = 1 + CLASS_CONTEXTS * neighbour_count(nonzero[:-1]) + cls[1:]
        sign[1:] = np.sign(planes[:-1]) + 1
    return sig, cls, sign


def _chunk_slices(shape, chunk):
    grid = [range(0, n, c) for n, c in zip(shape, chunk, strict=True)]
    for starts in np.ndindex(*(len(g) for g in grid)):
        yield tuple(
            slice(g[i], min(g[i] + c, n))
            for g, i, c, n in zip(grid, starts, chunk, shape, strict=True)
        )


def _class_frequencies(counts: np.ndarray) -> np.ndarray:
    top = counts.max() if counts.size else 0
    if top > 65535:
        scaled = np.rint(counts * (65535.0 / top))
        counts = np.where(counts > 0, np.maximum(scaled, 1), 0)
    return counts.astype("<u2")


def _class_probabilities(words: np.ndarray) -> np.ndarray:
    """Rows of class probabilities; a row of zeros (a context never seen) becomes uniform."""
    words = words.astype(np.float64)
    words[words.sum(axis=1) == 0] = 1.0
    return words / words.sum(axis=1, keepdims=True)


def _encode_chunk(q: np.ndarray, tables: tuple[np.ndarray, np.ndarray, np.ndarray]) -> bytes:
    planes = q.reshape((-1, *q.shape[-2:]))  # a 4D chunk has a leading edge of 1
    if not planes.any():
        return b""
    significance, classes, signs = tables
    sig_ctx, cls_ctx, sign_ctx = _contexts(planes)
    coder = constriction.stream.stack.AnsCoder()
    bernoulli = _MODEL.Bernoulli(perfect=False)
    for d in range(planes.shape[0] - 1, -1, -1):  # a stack: encode in reverse decoding order
        nonzero = planes[d] != 0
        values = planes[d][nonzero]
        if values.size:
            magnitude = np.abs(values)
            cls = magnitude_class(magnitude)
            with_bits = cls > 0
            if with_bits.any():
                low = (magnitude[with_bits] - (np.int64(1) << cls[with_bits])).astype(np.int32)
                sizes = (np.int64(1) << cls[with_bits]).astype(np.int32)
                coder.encode_reverse(low, _MODEL.Uniform(), sizes)
            coder.encode_reverse(
                (values < 0).astype(np.int32), bernoulli, signs[sign_ctx[d][nonzero]]
            )
            if classes.shape[1] > 1:
                # One categorical per code: constriction takes a probability row per symbol.
                model = _MODEL.Categorical(perfect=False)
                coder.encode_reverse(cls, model, classes[cls_ctx[d][nonzero]])
        coder.encode_reverse(
            nonzero.ravel().astype(np.int32), bernoulli, significance[sig_ctx[d].ravel()]
        )
    return coder.get_compressed().astype("<u4").tobytes()


def encode_chunks(
    q: np.ndarray,
    *,
    dtype: np.dtype,
    chunk: tuple[int, int, int],
    max_error: float,
    step: float,
    lo: float,
    hi: float,
    anchors: np.ndarray,
) -> bytes:
    """The stream of integer codes ``q`` (int64, |q| < 2^MAX_CLASSES, the volume's shape);
    ``anchors`` are the sorted flat indices of the voxels whose codes count from ``lo``."""
    shape = q.shape
    chunks = full_chunk(chunk, q.ndim)
    # Fit the shared tables on every chunk first (a table is cheaper than adapting, and
    # chunks must decode independently).
    top = int(np.abs(q).max()) if q.size else 0
    n_classes = int(magnitude_class(np.array([top]))[0]) + 1 if top else 0
    sig_n = np.zeros((NUM_CONTEXTS, 2))
    cls_n = np.zeros((CLASS_CONTEXTS, n_classes))
    sign_n = np.zeros((SIGN_CONTEXTS, 2))
    for sl in _chunk_slices(shape, chunks):
        planes = q[sl].reshape((-1, *q[sl].shape[-2:]))
        sig_ctx, cls_ctx, sign_ctx = _contexts(planes)
        nonzero = planes != 0
        np.add.at(sig_n, (sig_ctx.ravel(), nonzero.ravel().astype(np.int64)), 1)
        if nonzero.any():
            cls = magnitude_class(np.abs(planes[nonzero]))
            np.add.at(cls_n, (cls_ctx[nonzero], cls), 1)
            np.add.at(sign_n, (sign_ctx[nonzero], (planes[nonzero] < 0).astype(np.int64)), 1)
    sig_bytes = probability_byte((sig_n[:, 1] + 0.5) / (sig_n.sum(axis=1) + 1.0))
    sign_bytes = probability_byte((sign_n[:, 1] + 0.5) / (sign_n.sum(axis=1) + 1.0))
    class_words = _class_frequencies(cls_n)
    tables = (probability(sig_bytes), _class_probabilities(class_words), probability(sign_bytes))

    dtype = np.dtype(dtype)
    head = bytearray(_FIXED.pack(VERSION, DTYPES.index(dtype.name), q.ndim))
    head += struct.pack(f"<{q.ndim}I", *shape)
    head += _TAIL.pack(*chunk, max_error, step)
    head += np.array([lo, hi], dtype=dtype.newbyteorder("<")).tobytes()
    head += sig_bytes.tobytes() + sign_bytes.tobytes()
    head += bytes([n_classes]) + class_words.tobytes()
    head += varint.encode(len(anchors))
    for gap in np.diff(np.asarray(anchors, np.int64), prepend=-1).tolist():
        head += varint.encode(gap - 1)
    index = bytearray()
    body = []
    for sl in _chunk_slices(shape, chunks):
        words = _encode_chunk(q[sl], tables)
        index += varint.encode(len(words) // 4)
        body.append(words)
    return bytes(head) + bytes(index) + b"".join(body)


def _need(data: bytes, pos: int, size: int, what: str) -> None:
    if pos + size > len(data):
        raise MoecFormatError(
            f"correction stream truncated in {what}: needs {pos + size} bytes, has {len(data)}"
        )


def parse(data: bytes, expected_shape: tuple[int, ...], expected_dtype) -> Stream:
    """Check and parse a correction stream's header and index (no chunk is decoded).

    ``expected_shape`` and ``expected_dtype`` are what the container says the volume is (the
    ``.moec`` header): the stream must agree, so no size read from it can exceed what the
    caller already holds.

    Raises
    ------
    MoecFormatError
        Naming the first field that is truncated, out of range or not the expected one.
    """
    data = bytes(data)
    _need(data, 0, _FIXED.size, "header")
    version, code, ndim = _FIXED.unpack_from(data, 0)
    if version != VERSION:
        raise MoecFormatError(f"unknown correction stream version {version}")
    if code >= len(DTYPES):
        raise MoecFormatError(f"correction stream dtype code {code} is not one of 0..3")
    if ndim not in (3, 4):
        raise MoecFormatError(f"correction stream {ndim=} is not 3 or 4")
    dtype = np.dtype(DTYPES[code])
    pos = _FIXED.size
    _need(data, pos, 4 * ndim + _TAIL.size + 2 * dtype.itemsize, "header")
    shape = struct.unpack_from(f"<{ndim}I", data, pos)
    pos += 4 * ndim
    expected = (tuple(int(n) for n in expected_shape), np.dtype(expected_dtype))
    if (tuple(shape), dtype) != expected:
        raise MoecFormatError(
            f"correction stream is for {tuple(shape)} {dtype}, the volume is "
            f"{expected[0]} {expected[1]}"
        )
    *edges, max_error, step = _TAIL.unpack_from(data, pos)
    pos += _TAIL.size
    if min(edges) < 1 or max(edges) > MAX_EDGE or np.prod(edges) > MAX_CHUNK_VOXELS:
        raise MoecFormatError(f"correction stream chunk {tuple(edges)} out of range")
    if not (np.isfinite(max_error) and max_error > 0 and np.isfinite(step) and step > 0):
        raise MoecFormatError(f"correction stream bound {max_error=} {step=} is not positive")
    lo, hi = np.frombuffer(data, dtype.newbyteorder("<"), 2, pos).astype(np.float64)
    pos += 2 * dtype.itemsize
    if not (np.isfinite(lo) and np.isfinite(hi) and lo <= hi):
        raise MoecFormatError(f"correction stream clip range [{lo}, {hi}] is not valid")
    _need(data, pos, NUM_CONTEXTS + SIGN_CONTEXTS + 1, "probability tables")
    sig = np.frombuffer(data, np.uint8, NUM_CONTEXTS, pos)
    signs = np.frombuffer(data, np.uint8, SIGN_CONTEXTS, pos + NUM_CONTEXTS)
    pos += NUM_CONTEXTS + SIGN_CONTEXTS
    if sig.min() < 1 or signs.min() < 1:
        raise MoecFormatError("correction stream probability byte 0 is not valid")
    n_classes = data[pos]
    pos += 1
    if n_classes > MAX_CLASSES:
        raise MoecFormatError(f"correction stream has {n_classes} classes, at most {MAX_CLASSES}")
    _need(data, pos, 2 * CLASS_CONTEXTS * n_classes, "class table")
    words = np.frombuffer(data, "<u2", CLASS_CONTEXTS * n_classes, pos)
    pos += words.nbytes
    if n_classes and words.sum() == 0:
        raise MoecFormatError("correction stream class frequencies are all 0")
    count, pos = varint.decode(data, pos, len(data), "anchor count", "correction stream: ")
    if count > len(data) - pos:  # every anchor has a byte
        raise MoecFormatError(f"correction stream list of {count} anchors is truncated")
    anchors = np.empty(count, np.int64)
    last = -1
    for i in range(count):
        gap, pos = varint.decode(data, pos, len(data), "anchors", "correction stream: ")
        last += gap + 1
        anchors[i] = last
    if count and last >= int(np.prod(shape, dtype=np.float64)):
        raise MoecFormatError(f"correction stream anchor {last} is outside the volume")
    chunk = full_chunk(tuple(edges), ndim)
    grid = [-(-n // c) for n, c in zip(shape, chunk, strict=True)]
    n_chunks = int(np.prod(grid, dtype=np.float64))
    if n_chunks > len(data) - pos:  # every chunk has an index byte
        raise MoecFormatError(f"correction stream index of {n_chunks} chunks is truncated")
    lengths = np.empty(n_chunks, np.int64)
    for i in range(n_chunks):
        lengths[i], pos = varint.decode(data, pos, len(data), "chunk index", "correction stream: ")
    offsets = pos + 4 * np.concatenate([[0], np.cumsum(lengths)])
    if offsets[-1] != len(data):
        raise MoecFormatError(
            f"correction stream chunks take {offsets[-1] - pos} bytes, {len(data) - pos} remain"
        )
    if n_classes == 0 and offsets[-1] != pos:
        raise MoecFormatError("correction stream has chunk data but no magnitude classes")
    return Stream(
        dtype,
        tuple(shape),
        chunk,
        float(max_error),
        float(step),
        float(lo),
        float(hi),
        probability(sig),
        _class_probabilities(words.reshape(CLASS_CONTEXTS, n_classes)),
        probability(signs),
        anchors,
        offsets,
        data,
    )


def decode_chunk(stream: Stream, index: tuple[int, ...], planes: int | None = None) -> np.ndarray:
    """The int64 codes of the chunk at grid position ``index`` (edge chunks are smaller).

    ``planes`` stops after that many planes along the third-last axis (the rest stay 0): a
    plane's contexts need only the planes before it, so a z-slice near the start of a chunk
    costs a few planes. Only a full decode can check that the chunk ends where it should.
    """
    flat = int(np.ravel_multi_index(index, stream.grid))
    shape = tuple(
        min(c, n - i * c) for i, c, n in zip(index, stream.chunk, stream.shape, strict=True)
    )
    start, stop = stream.offsets[flat], stream.offsets[flat + 1]
    if start == stop:
        return np.zeros(shape, np.int64)
    try:
        raw = stream.data[start:stop]
        return _decode_words(stream, shape, raw, planes).reshape(shape)
    except MoecFormatError:
        raise
    except Exception as exc:  # constriction reports a corrupt stream with various builtins
        raise MoecFormatError(f"correction chunk {index} cannot be decoded: {exc}") from exc


def _decode_words(stream: Stream, shape, raw: bytes, planes: int | None) -> np.ndarray:
    coder = constriction.stream.stack.AnsCoder(np.frombuffer(raw, "<u4").astype(np.uint32))
    h, w = shape[-2:]
    q = np.zeros((int(np.prod(shape[:-2])), h, w), np.int64)
    bernoulli = _MODEL.Bernoulli(perfect=False)
    n_classes = stream.classes.shape[1]
    sig_ctx = np.zeros((h, w), np.int32)
    cls_ctx = np.zeros((h, w), np.int32)
    sign_ctx = np.ones((h, w), np.int32)
    full = planes is None or planes >= q.shape[0]
    for d in range(q.shape[0] if full else max(planes, 0)):
        nonzero = coder.decode(bernoulli, stream.significance[sig_ctx.ravel()]).reshape(h, w) != 0
        count = int(nonzero.sum())
        if count:
            if n_classes > 1:
                probs = stream.classes[cls_ctx[nonzero]]
                cls = coder.decode(_MODEL.Categorical(perfect=False), probs).astype(np.int64)
            elif n_classes == 1:
                cls = np.zeros(count, np.int64)
            else:
                raise MoecFormatError("correction chunk has a nonzero code but no classes")
            negative = coder.decode(bernoulli, stream.signs[sign_ctx[nonzero]]) != 0
            magnitude = np.int64(1) << cls
            with_bits = cls > 0
            if with_bits.any():
                sizes = (np.int64(1) << cls[with_bits]).astype(np.int32)
                magnitude[with_bits] += coder.decode(_MODEL.Uniform(), sizes)
            q[d][nonzero] = np.where(negative, -magnitude, magnitude)
        cls_ctx = _previous_class(q[d])
        sig_ctx = 1 + CLASS_CONTEXTS * neighbour_count(nonzero).astype(np.int32) + cls_ctx
        sign_ctx = np.sign(q[d]).astype(np.int32) + 1
    if not full:
        return q
    if not coder.is_empty():
        raise MoecFormatError("correction chunk has trailing data")
    if not q.any():
        raise MoecFormatError("correction chunk stored with no nonzero code")
    return q
