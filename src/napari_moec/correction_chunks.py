"""How one chunk of correction codes becomes ANS words and back: stream versions 1 and 2.

:mod:`napari_moec.correction_codec` frames the stream (header, tables, chunk index); this
module holds the context models, which are what the two versions differ in. A chunk is coded
plane by plane along its third-last axis; a plane is one *group* (version 1) or two (version
2), and a group's codes are coded as JPEG codes coefficients: per position a significance flag
``q != 0`` (Bernoulli), then for the nonzero ones the magnitude class ``floor(log2 |q|)``
(categorical), the sign (Bernoulli) and the class's low bits (uniform). Each of the first three
takes its probability from a table row picked by a context.

* Version 1: one group per plane; contexts from the previous plane only (the 3x3
  neighbourhood's nonzero count and the class and sign at the same position).
* Version 2: the plane's checkerboard halves, in two groups. The first half (``(y + x)``
  even, chunk-local) has version 1's contexts; the second half also sees its four in-plane
  neighbours, all in the first half and so already decoded: how many are nonzero (0..4), their
  largest class context (0..3) and the sign of their sum. Measured on ct_head with grid
  networks of 300 steps at 8x-256x: 1.4-7.6 % fewer bytes than version 1 at bounds of
  1-5 % of the range (the most where the network is coarse and the residuals dense). Both
  halves decode with a few vectorised calls per plane (a causal context of the row above and
  the voxel to the left estimated ~20 % fewer bytes, but it decodes one voxel at a time).
  Version 2 also codes the low bits of classes 1..3 (magnitudes 2..15) with a table per class
  (magnitudes are skewed to the small end of their class: ~2 % of the stream).

Everything here is in-memory: sizes are checked by the framing before a chunk is decoded.
"""

from __future__ import annotations

import constriction
import numpy as np

from .errors import MoecFormatError

__all__ = ["CLASS_CONTEXTS", "NUM_CONTEXTS", "SIGN_CONTEXTS", "Tables", "decode", "encode"]

#: Version-1 significance contexts: the first plane of a chunk, then 10 neighbour counts x 4
#: classes of the previous plane.
NUM_CONTEXTS = 41
#: Version-1 class and sign contexts: what the previous plane holds at the same position.
CLASS_CONTEXTS = 4
SIGN_CONTEXTS = 3
#: Values of each in-plane context of version 2's second half.
_COUNTS, _CLASSES, _SIGNS = 5, CLASS_CONTEXTS, 3
#: Table rows per version: (significance, class, sign); version 2 appends the second half's.
TABLE_ROWS = {
    1: (NUM_CONTEXTS, CLASS_CONTEXTS, SIGN_CONTEXTS),
    2: (
        NUM_CONTEXTS * (1 + _COUNTS),
        CLASS_CONTEXTS * (1 + _CLASSES),
        SIGN_CONTEXTS * (1 + _SIGNS),
    ),
}
#: Version 3's network chunks are version 2's.
TABLE_ROWS[3] = TABLE_ROWS[2]
_MODEL = constriction.stream.model

#: Version 2 codes the low bits of classes 1..LOW_CLASSES with a table each (2, 4, 8 values).
LOW_CLASSES = 3

#: (significance P(q != 0) per row, class probability rows, sign P(q < 0) per row, and per
#: class k = 1.. the probabilities of its 2^k low-bit values: () in version 1).
Tables = tuple[np.ndarray, np.ndarray, np.ndarray, tuple[np.ndarray, ...]]


def low_classes(version: int, n_classes: int) -> int:
    """How many classes (1..) have a low-bit table: none in version 1, else up to 3 of the
    stream's classes above 0."""
    return 0 if version == 1 else min(LOW_CLASSES, max(n_classes - 1, 0))


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


def class_context(q: np.ndarray) -> np.ndarray:
    """Per position: 0 if the code is 0, else min(class + 1, 3)."""
    out = np.zeros(q.shape, np.int32)
    nonzero = q != 0
    out[nonzero] = np.minimum(magnitude_class(np.abs(q[nonzero])) + 1, CLASS_CONTEXTS - 1)
    return out


def plane_contexts(planes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Version-1 (significance, class, sign) contexts of every code of planes (D, H, W): each
    from the plane before (the first plane's: 0, 0 and "no sign"); the decoder rebuilds them
    plane by plane with :func:`next_contexts`."""
    shape = planes.shape
    sig = np.zeros(shape, np.int32)
    cls = np.zeros(shape, np.int32)
    sign = np.ones(shape, np.int32)
    if shape[0] > 1:
        sig[1:], cls[1:], sign[1:] = next_contexts(planes[:-1])
    return sig, cls, sign


def next_contexts(planes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Version-1 contexts of the plane after each of ``planes`` (..., H, W)."""
    cls = class_context(planes)
    sig = 1 + CLASS_CONTEXTS * neighbour_count(planes != 0).astype(np.int32) + cls
    return sig, cls, np.sign(planes).astype(np.int32) + 1


def first_half(h: int, w: int) -> np.ndarray:
    """The checkerboard half of a (h, w) plane that version 2 codes first: ``(y + x)`` even."""
    return (np.add.outer(np.arange(h), np.arange(w)) % 2) == 0


def second_half_contexts(contexts, first: np.ndarray):
    """Version 2's contexts of the second half, from the version-1 ``contexts`` and the codes
    of the first half (``first``: codes (..., H, W) with the second half's positions 0). Row
    indices into the version-2 tables, past the first half's rows."""
    sig, cls, sign = contexts
    pad = [(0, 0)] * (first.ndim - 2) + [(1, 1), (1, 1)]
    padded = np.pad(first, pad)
    classes = np.pad(class_context(first), pad)
    near = (
        np.s_[..., :-2, 1:-1],
        np.s_[..., 2:, 1:-1],
        np.s_[..., 1:-1, :-2],
        np.s_[..., 1:-1, 2:],
    )
    count = sum((padded[at] != 0).astype(np.int32) for at in near)
    largest = np.maximum.reduce([classes[at] for at in near])
    signs = np.sign(sum(padded[at] for at in near)).astype(np.int32) + 1
    return (
        NUM_CONTEXTS + sig * _COUNTS + count,
        CLASS_CONTEXTS + cls * _CLASSES + largest,
        SIGN_CONTEXTS + sign * _SIGNS + signs,
    )


def groups(planes: np.ndarray, version: int):
    """``(mask, (sig, cls, sign))`` per group of every plane at once (the encoder's view): the
    positions a group codes and the table rows of every position."""
    base = plane_contexts(planes)
    if version == 1:
        return [(np.ones(planes.shape[-2:], bool), base)]
    half = first_half(*planes.shape[-2:])
    return [(half, base), (~half, second_half_contexts(base, np.where(half, planes, 0)))]


def encode(planes: np.ndarray, tables: Tables, version: int) -> bytes:
    """The ANS words of a chunk's codes (planes (D, H, W) int64); b"" when all are 0."""
    if not planes.any():
        return b""
    coder = constriction.stream.stack.AnsCoder()
    parts = groups(planes, version)
    for d in range(planes.shape[0] - 1, -1, -1):  # a stack: encode in reverse decoding order
        for mask, (sig, cls, sign) in reversed(parts):
            _encode_group(coder, planes[d][mask], sig[d][mask], cls[d][mask], sign[d][mask], tables)
    return coder.get_compressed().astype("<u4").tobytes()


def _encode_group(coder, values, sig, cls_ctx, sign, tables: Tables) -> None:
    significance, classes, signs, low = tables
    bernoulli = _MODEL.Bernoulli(perfect=False)
    nonzero = values != 0
    if nonzero.any():
        magnitude = np.abs(values[nonzero])
        cls = magnitude_class(magnitude)
        bits = (magnitude - (np.int64(1) << cls)).astype(np.int32)
        # a stack, so the reverse of decoding order: class 1's bits, 2's, .., then the rest
        rest = cls > len(low)
        if rest.any():
            sizes = (np.int64(1) << cls[rest]).astype(np.int32)
            coder.encode_reverse(bits[rest], _MODEL.Uniform(), sizes)
        for k in range(len(low), 0, -1):
            if (cls == k).any():
                model = _MODEL.Categorical(low[k - 1], perfect=False)
                coder.encode_reverse(bits[cls == k], model)
        negative = (values[nonzero] < 0).astype(np.int32)
        coder.encode_reverse(negative, bernoulli, signs[sign[nonzero]])
        if classes.shape[1] > 1:
            # One categorical per code: constriction takes a probability row per symbol.
            model = _MODEL.Categorical(perfect=False)
            coder.encode_reverse(cls, model, classes[cls_ctx[nonzero]])
    coder.encode_reverse(nonzero.astype(np.int32), bernoulli, significance[sig])


def decode(words: bytes, shape, tables: Tables, version: int, planes: int | None) -> np.ndarray:
    """Codes (P, H, W) int64 of a chunk from its words; ``planes`` stops early (the rest 0).

    Raises
    ------
    MoecFormatError
        Trailing words, a chunk of zeros stored as words, or a nonzero code without classes.
    """
    coder = constriction.stream.stack.AnsCoder(np.frombuffer(words, "<u4").astype(np.uint32))
    h, w = shape[-2:]
    q = np.zeros((int(np.prod(shape[:-2])), h, w), np.int64)
    contexts = (np.zeros((h, w), np.int32), np.zeros((h, w), np.int32), np.ones((h, w), np.int32))
    half = np.ones((h, w), bool) if version == 1 else first_half(h, w)
    full = planes is None or planes >= q.shape[0]
    for d in range(q.shape[0] if full else max(planes, 0)):
        plane = q[d]
        plane[half] = _decode_group(coder, [c[half] for c in contexts], tables)
        if version >= 2:
            rest = second_half_contexts(contexts, plane)
            plane[~half] = _decode_group(coder, [c[~half] for c in rest], tables)
        contexts = next_contexts(plane)
    if not full:
        return q
    if not coder.is_empty():
        raise MoecFormatError("correction chunk has trailing data")
    if not q.any():
        raise MoecFormatError("correction chunk stored with no nonzero code")
    return q


def _decode_group(coder, contexts, tables: Tables) -> np.ndarray:
    significance, classes, signs, low = tables
    sig, cls_ctx, sign = contexts
    bernoulli = _MODEL.Bernoulli(perfect=False)
    nonzero = coder.decode(bernoulli, significance[sig]) != 0
    out = np.zeros(sig.size, np.int64)
    count = int(nonzero.sum())
    if not count:
        return out
    n_classes = classes.shape[1]
    if n_classes > 1:
        cls = coder.decode(_MODEL.Categorical(perfect=False), classes[cls_ctx[nonzero]])
        cls = cls.astype(np.int64)
    elif n_classes == 1:
        cls = np.zeros(count, np.int64)
    else:
        raise MoecFormatError("correction chunk has a nonzero code but no classes")
    negative = coder.decode(bernoulli, signs[sign[nonzero]]) != 0
    magnitude = np.int64(1) << cls
    for k in range(1, len(low) + 1):
        this = cls == k
        if this.any():
            model = _MODEL.Categorical(low[k - 1], perfect=False)
            magnitude[this] += coder.decode(model, int(this.sum()))
    rest = cls > len(low)
    if rest.any():
        sizes = (np.int64(1) << cls[rest]).astype(np.int32)
        magnitude[rest] += coder.decode(_MODEL.Uniform(), sizes)
    out[nonzero] = np.where(negative, -magnitude, magnitude)
    return out
