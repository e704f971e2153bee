"""The correction stream of ``--max-error``: byte layout and entropy coding of the integer codes.

:mod:`napari_moec.correction` decides *what* to code (integers ``q``, mostly 0, one per voxel:
the decoded value is ``clip(prediction) + step * q``); this module decides *how*. This
docstring is the byte-level specification. All integers little-endian::

    size        field
    1           u8  version: 1, 2 or 3 (the chunk coders' context models, below)
    1           u8  dtype code: 0 uint8, 1 uint16, 2 int16, 3 float32
    1           u8  ndim, 3 or 4
    4 ndim      u32 shape, each >= 1; must equal the container's shape (and dtype)
    6           3 x u16 chunk edge along the last three axes, each 1..MAX_EDGE, product <=
                MAX_CHUNK_VOXELS (a leading 4th axis is chunked by 1)
    8           f64 max_error E, the promised bound (finite, > 0)
    8           f64 step s (finite, > 0)
    2 w         lo, hi: the clip range, in the dtype (w = its size); finite, lo <= hi
    S           u8 significance probabilities P(q != 0 | context), one per context
    G           u8 sign probabilities P(q < 0 | context)
    1           u8  K, number of magnitude classes, 0..MAX_CLASSES (0: every q is 0)
    2 C K       C x K u16 class frequencies, one row per class context (a zero row: uniform)
    2 (2^1 ..   versions 2-3: for each class k = 1 .. min(3, K - 1), 2^k u16 frequencies
     + 2^L)     of the k low bits of its magnitudes (a zero row: uniform)
    ...         version 3 only: the absolute chunks' tables, laid out as the five fields
                above (S', G', K', C' x K' class words, low bits), (S', C', G') = (97, 25, 4)

    In version 3 a u8 of table flags precedes the tables (after lo, hi): bit 0 set when the
    network tables (S .. low bits) follow, bit 1 when the absolute ones do, other bits 0; a
    coding no chunk uses has no tables.
    varint      A, the number of anchored voxels (LEB128, as every varint here)
    varint x A  their C-order flat indices, each as the gap to the previous one minus 1
                (the first as the index itself); all inside the volume. An anchored voxel
                decodes as ``lo + s q``, whatever the prediction there (see correction)
    varint x n  per chunk, in C order over the chunk grid: its stream length in u32 words
                (LEB128, at most 5 bytes; 0 = every code of the chunk is 0); version 3:
                2 x length + 1 for an absolute chunk, 2 x length for a network chunk
    4 sum       the chunk streams, concatenated; together they end the stream exactly

(S, C, G) = (41, 4, 3) in version 1 and (246, 20, 12) in versions 2 and 3, whose rows past
version 1's are the second checkerboard half's (:data:`~napari_moec.correction_chunks.TABLE_ROWS`).

Version 3 adds *absolute* chunks (:mod:`napari_moec.correction_interp`, which specifies
their coding): they ignore the network (as anchored voxels do) and code the data itself, as
SZ3 does, by a multilevel linear interpolation of the chunk's own decoded values; each code
``e = rint((x - p) / s)`` around its prediction ``p``, decoded ``p + s e``, has
``|e| <= floor((hi - lo) / s) + 1`` (a reader refuses any other). The writer picks per chunk
the smaller coding: at tight bounds, where a small network's residual is dense noise and the
data's own neighbours predict better, most chunks are absolute (the macaque at 1 % of its
range: 23 of 24, the stream 40 % smaller than version 2's).

A probability byte k (1..255) stands for ``(k/128)^2 / 2`` below 128 and
``1 - ((256-k)/128)^2 / 2`` from 128 (:func:`probability`): fine near 0 and 1, where the
contexts of a sparse stream live, and exact in IEEE arithmetic on every platform.

Chunks make a region cheap: the reader decodes only the chunks an ROI + stride touches (a
64^3 chunk is 262k codes), and a chunk whose codes are all 0 costs one index byte. Each chunk
is one constriction ANS stream (u32 words) holding, plane by plane along the third-last axis,
in decoding order, one group of codes per plane (version 1) or two (version 2: the plane's
positions with chunk-local ``y + x`` even, then the odd ones). A group codes:

1. its significance flags ``q != 0``, one Bernoulli each, context ``0`` in the first
   plane of the chunk, else ``1 + 4 n + c`` with n (0..9) the nonzero codes in the 3x3
   neighbourhood of the same position in the previous plane and c its class context;
2. for its nonzero codes (C order), the magnitude class ``floor(log2 |q|)`` with the
   categorical row of the class context: 0 if the previous plane's code at the same position
   is 0, else min(its class + 1, 3) (not coded when K = 1);
3. their signs, Bernoulli, context the sign of the previous plane's code there (-, 0, +);
4. the low ``class`` bits of each magnitude, uniform (as JPEG codes a category and its bits);
   in version 2, those of classes 1..3 first, each class with its table, then the rest.

Version 2's second group refines each context with the position's four in-plane neighbours
(all in the first group, so decoded): significance row ``41 + 5 ctx + m`` (m: how many of
them are nonzero), class row ``4 + 4 ctx + g`` (g: their largest class context), sign row
``3 + 3 ctx + t`` (t: the sign of their sum, -, 0, +); see
:mod:`napari_moec.correction_chunks`. The writer codes every version and keeps the smallest.

Errors of a smooth predictor cluster at edges and keep their sign across planes: on the shared
volumes these contexts take 10-50 % off an order-0 code of q (blurred stand-in predictions).
Contexts look back one plane only, so a plane decodes with a few vectorised calls. Every
number read sizes an allocation only after it is checked against these limits and the bytes
that remain; every failure raises :class:`~napari_moec.errors.MoecFormatError`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from . import correction_chunks as chunks
from . import correction_interp as interp
from . import varint
from .correction_chunks import TABLE_ROWS
from .errors import MoecFormatError

__all__ = ["DTYPES", "MAX_CLASSES", "Stream", "decode_chunk", "encode_chunks", "parse"]

#: Stream versions this reader decodes; the writer keeps whichever codes a stream smaller.
VERSIONS = (1, 2, 3)
DTYPES = ("uint8", "uint16", "int16", "float32")
MAX_VOXELS = 1 << 40
MAX_EDGE = 1024
MAX_CHUNK_VOXELS = 1 << 22
#: Classes 0..23: |q| < 2^24, the largest alphabet constriction's Uniform takes for the low bits.
MAX_CLASSES = 24
_FIXED = struct.Struct("<BBB")
_TAIL = struct.Struct("<3Hdd")


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

    version: int
    dtype: np.dtype
    shape: tuple[int, ...]
    chunk: tuple[int, ...]  # one edge per axis (1 on a leading 4th axis)
    max_error: float
    step: float
    lo: float
    hi: float
    significance: np.ndarray  # (rows,) float64 P(q != 0), rows: TABLE_ROWS[version]
    classes: np.ndarray  # (rows, K) float64 rows of class probabilities
    signs: np.ndarray  # (rows,) float64 P(q < 0)
    low: tuple[np.ndarray, ...]  # per class 1..: probabilities of its low bits (v2 only)
    anchors: np.ndarray  # sorted int64 C-order flat indices of voxels coded against ``lo``
    offsets: np.ndarray  # (n_chunks + 1,) int64 byte offsets of the chunk streams in `data`
    data: bytes
    absolute: np.ndarray  # (n_chunks,) bool: the chunk codes the data itself (version 3)
    absolute_tables: tuple | None  # the absolute chunks' tables (version 3)

    @property
    def top(self) -> int:
        """The largest magnitude of an absolute chunk's code: a valid writer's
        ``rint((x - p) / step)`` has ``x`` in [lo, hi] and ``p`` within ``step/2`` of it."""
        return int((self.hi - self.lo) / self.step) + 1

    @property
    def grid(self) -> tuple[int, ...]:
        """Number of chunks along each axis."""
        return tuple(-(-n // c) for n, c in zip(self.shape, self.chunk, strict=True))


def full_chunk(edges: tuple[int, int, int], ndim: int) -> tuple[int, ...]:
    return (1,) * (ndim - 3) + tuple(edges)


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


def _network_groups(planes: np.ndarray, version: int):
    """``(values, sig, cls, sign)`` per group of a network chunk (planes (P, H, W))."""
    for mask, (sig, cls, sign) in chunks.groups(planes, version):
        yield planes[:, mask].ravel(), sig[:, mask].ravel(), cls[:, mask].ravel(), \
            sign[:, mask].ravel()  # fmt: skip


def _fit_tables(parts, rows: tuple[int, int, int], low_tables: bool):
    """The shared tables of a set of chunks and their header bytes.

    ``parts`` yields every chunk's groups ``(values, sig, cls, sign)``. Returns ``(tables,
    bytes)``: significance bytes, sign bytes, K, class words, low-bit words (classes 1..3
    when ``low_tables``). A table is cheaper than adapting, and chunks decode independently.
    """
    parts = list(parts)
    top = max((int(np.abs(v).max(initial=0)) for group in parts for v, *_ in group), default=0)
    n_classes = int(chunks.magnitude_class(np.array([top]))[0]) + 1 if top else 0
    sig_n = np.zeros((rows[0], 2))
    cls_n = np.zeros((rows[1], n_classes))
    sign_n = np.zeros((rows[2], 2))
    n_low = min(chunks.LOW_CLASSES, max(n_classes - 1, 0)) if low_tables else 0
    low_n = [np.zeros(1 << k) for k in range(1, n_low + 1)]
    for group in parts:
        for values, sig, cls_ctx, sign in group:
            nonzero = values != 0
            np.add.at(sig_n, (sig, nonzero.astype(np.int64)), 1)
            if nonzero.any():
                magnitude = np.abs(values[nonzero])
                cls = chunks.magnitude_class(magnitude)
                np.add.at(cls_n, (cls_ctx[nonzero], cls), 1)
                np.add.at(sign_n, (sign[nonzero], (values[nonzero] < 0).astype(np.int64)), 1)
                for k, counts in enumerate(low_n, start=1):
                    counts += np.bincount(magnitude[cls == k] - (1 << k), minlength=1 << k)
    low_words = [_class_frequencies(counts) for counts in low_n]
    sig_bytes = probability_byte((sig_n[:, 1] + 0.5) / (sig_n.sum(axis=1) + 1.0))
    sign_bytes = probability_byte((sign_n[:, 1] + 0.5) / (sign_n.sum(axis=1) + 1.0))
    class_words = _class_frequencies(cls_n)
    tables = (
        probability(sig_bytes),
        _class_probabilities(class_words),
        probability(sign_bytes),
        tuple(_class_probabilities(w[None])[0] for w in low_words),
    )
    raw = sig_bytes.tobytes() + sign_bytes.tobytes() + bytes([n_classes])
    raw += class_words.tobytes() + b"".join(w.tobytes() for w in low_words)
    return tables, raw


def _block(codes: np.ndarray) -> np.ndarray:
    """A chunk as the 3D block the interpolation coder takes (a 4D chunk is 1 deep)."""
    return codes.reshape(codes.shape[-3:])


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
    original: np.ndarray | None = None,
    version: int | None = None,
) -> bytes:
    """The stream of integer codes ``q`` (int64, |q| < 2^MAX_CLASSES, the volume's shape);
    ``anchors`` are the sorted flat indices of the voxels whose codes count from ``lo``.
    ``original`` (version 3) is the volume in float64: a chunk may code it by interpolation
    instead of coding ``q`` (an absolute chunk, :mod:`correction_interp`).
    ``version`` None codes every version of :data:`VERSIONS` and keeps the smallest (a
    version-2 table costs ~0.5 kB more, which a stream of a few hundred codes does not repay;
    version 3 needs ``original``)."""
    fields = dict(dtype=np.dtype(dtype), chunk=chunk, max_error=max_error, step=step, lo=lo,
                  hi=hi, anchors=anchors)  # fmt: skip
    if version is not None and version not in VERSIONS:
        raise ValueError(f"correction stream version {version} is not one of {VERSIONS}")
    if version == 3 and (original is None or original.shape != q.shape):
        raise ValueError("version 3 needs the original volume")
    slices = list(_chunk_slices(q.shape, full_chunk(chunk, q.ndim)))
    net = [q[sl].reshape((-1, *q[sl].shape[-2:])) for sl in slices]
    if version == 1:
        return _stream(q, net, 1, fields, _network_coding(net, 1))
    # Network chunks coded with tables fitted on every chunk: version 2's stream, and the
    # network side of version 3's choice (its network coder is version 2's).
    every = _network_coding(net, 2)
    if version == 2:
        return _stream(q, net, 2, fields, every)
    blocks = None if original is None else [
        interp.groups(_block(original[sl]), step, lo) for sl in slices
    ]  # fmt: skip
    modes = None if blocks is None else _choose_modes(every[2], blocks)
    if version == 3:
        return _stream(q, net, 3, fields, _network_coding(net, 3, ~modes), blocks, modes)
    streams = [_stream(q, net, 1, fields, _network_coding(net, 1)),
               _stream(q, net, 2, fields, every)]  # fmt: skip
    if modes is not None and modes.any():  # with none absolute, 3 is 2 plus a flags byte
        streams.append(_stream(q, net, 3, fields, _network_coding(net, 3, ~modes), blocks, modes))
    return min(streams, key=len)


def _network_coding(net: list[np.ndarray], version: int, use: np.ndarray | None = None):
    """``(tables, table bytes, words)`` of the network chunks ``use`` (default all): tables
    fitted on them, and each such chunk's ANS words (b"" for the others)."""
    use = np.ones(len(net), bool) if use is None else use
    tables, raw = _fit_tables(
        (list(_network_groups(p, version)) for p, u in zip(net, use, strict=True) if u),
        TABLE_ROWS[version],
        low_tables=version >= 2,
    )
    words = [chunks.encode(p, tables, version) if u else b"" for p, u in zip(net, use, strict=True)]
    return tables, raw, words


def _stream(q, net, version: int, fields: dict, network, blocks=None, modes=None) -> bytes:
    """One stream of ``version`` from the network chunks' coding ``network``
    (:func:`_network_coding`) and, in version 3, the absolute chunks ``modes`` coded from
    ``blocks`` (:func:`correction_interp.groups`)."""
    _, net_raw, net_words = network
    dtype, lo, hi, anchors = fields["dtype"], fields["lo"], fields["hi"], fields["anchors"]
    head = bytearray(_FIXED.pack(version, DTYPES.index(dtype.name), q.ndim))
    head += struct.pack(f"<{q.ndim}I", *q.shape)
    head += _TAIL.pack(*fields["chunk"], fields["max_error"], fields["step"])
    head += np.array([lo, hi], dtype=dtype.newbyteorder("<")).tobytes()
    modes = np.zeros(len(net), bool) if modes is None else modes
    if version == 3:
        abs_tables, abs_raw = _fit_tables(
            (b for b, m in zip(blocks, modes, strict=True) if m), interp.ROWS, low_tables=True
        )
        present = (not modes.all(), bool(modes.any()))
        head.append(present[0] | present[1] << 1)
        head += (net_raw if present[0] else b"") + (abs_raw if present[1] else b"")
    else:
        head += net_raw
    head += varint.encode(len(anchors))
    for gap in np.diff(np.asarray(anchors, np.int64), prepend=-1).tolist():
        head += varint.encode(gap - 1)
    index = bytearray()
    body = []
    for i, words in enumerate(net_words):
        if modes[i]:
            words = interp.encode(blocks[i], abs_tables)
        length = len(words) // 4
        index += varint.encode(2 * length + int(modes[i]) if version == 3 else length)
        body.append(words)
    return bytes(head) + bytes(index) + b"".join(body)


def _choose_modes(network_words: list[bytes], blocks: list) -> np.ndarray:
    """Per chunk, whether its absolute coding is smaller than its network coding
    (``network_words``: with tables fitted on every chunk), the absolute one also with tables
    fitted on every chunk (the final tables are refitted on the chunks chosen)."""
    abs_tables, _ = _fit_tables(blocks, interp.ROWS, low_tables=True)
    return np.array(
        [
            len(interp.encode(b, abs_tables)) < len(w)
            for w, b in zip(network_words, blocks, strict=True)
        ],
        bool,
    )


def _need(data: bytes, pos: int, size: int, what: str) -> None:
    if pos + size > len(data):
        raise MoecFormatError(
            f"correction stream truncated in {what}: needs {pos + size} bytes, has {len(data)}"
        )


#: The tables of a coding no chunk uses (version 3 leaves them out): no classes, so a chunk
#: claiming codes under them is refused.
_EMPTY_TABLES = (np.zeros(0), np.zeros((0, 0)), np.zeros(0), ())


def _read_tables(data: bytes, pos: int, rows: tuple[int, int, int], low_tables: bool):
    """One set of tables as :func:`_fit_tables` writes them, checked; and the next position."""
    sig_rows, cls_rows, sign_rows = rows
    _need(data, pos, sig_rows + sign_rows + 1, "probability tables")
    sig = np.frombuffer(data, np.uint8, sig_rows, pos)
    signs = np.frombuffer(data, np.uint8, sign_rows, pos + sig_rows)
    pos += sig_rows + sign_rows
    if sig.min() < 1 or signs.min() < 1:
        raise MoecFormatError("correction stream probability byte 0 is not valid")
    n_classes = data[pos]
    pos += 1
    if n_classes > MAX_CLASSES:
        raise MoecFormatError(f"correction stream has {n_classes} classes, at most {MAX_CLASSES}")
    _need(data, pos, 2 * cls_rows * n_classes, "class table")
    words = np.frombuffer(data, "<u2", cls_rows * n_classes, pos)
    pos += words.nbytes
    if n_classes and words.sum() == 0:
        raise MoecFormatError("correction stream class frequencies are all 0")
    low = []
    n_low = min(chunks.LOW_CLASSES, max(n_classes - 1, 0)) if low_tables else 0
    for k in range(1, n_low + 1):
        _need(data, pos, 2 << k, "low-bit table")
        low.append(_class_probabilities(np.frombuffer(data, "<u2", 1 << k, pos)[None])[0])
        pos += 2 << k
    tables = (
        probability(sig),
        _class_probabilities(words.reshape(cls_rows, n_classes)),
        probability(signs),
        tuple(low),
    )
    return tables, pos


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
    if version not in VERSIONS:
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
    present = (True, False)
    if version == 3:
        _need(data, pos, 1, "table flags")
        if data[pos] > 3:
            raise MoecFormatError(f"correction stream table flags {data[pos]} are not 0..3")
        present, pos = (bool(data[pos] & 1), bool(data[pos] & 2)), pos + 1
    net_tables = _EMPTY_TABLES
    if present[0]:
        net_tables, pos = _read_tables(data, pos, TABLE_ROWS[version], version >= 2)
    abs_tables = None
    if present[1]:
        abs_tables, pos = _read_tables(data, pos, interp.ROWS, True)
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
    modes = np.zeros(n_chunks, bool)
    if version == 3:
        if (hi - lo) / step + 2 >= 2**MAX_CLASSES:
            raise MoecFormatError(f"correction stream step {step} is too small for its range")
        modes, lengths = (lengths & 1).astype(bool), lengths >> 1
        if modes.any() and (abs_tables is None or abs_tables[1].shape[1] == 0):
            raise MoecFormatError("correction stream has absolute chunks but no classes")
        if (~modes & (lengths > 0)).any() and net_tables[1].shape[1] == 0:
            raise MoecFormatError("correction stream has chunk data but no magnitude classes")
    offsets = pos + 4 * np.concatenate([[0], np.cumsum(lengths)])
    if offsets[-1] != len(data):
        raise MoecFormatError(
            f"correction stream chunks take {offsets[-1] - pos} bytes, {len(data) - pos} remain"
        )
    if version < 3 and net_tables[1].shape[1] == 0 and offsets[-1] != pos:
        raise MoecFormatError("correction stream has chunk data but no magnitude classes")
    return Stream(
        version,
        dtype,
        tuple(shape),
        chunk,
        float(max_error),
        float(step),
        float(lo),
        float(hi),
        *net_tables,
        anchors,
        offsets,
        data,
        modes,
        abs_tables,
    )


def decode_chunk(stream: Stream, index: tuple[int, ...], planes: int | None = None) -> np.ndarray:
    """The chunk at grid position ``index`` (edge chunks are smaller): a network chunk's int64
    codes, or an absolute chunk's float64 decoded values (``stream.absolute``).

    ``planes`` stops a network chunk after that many planes along the third-last axis (the
    rest stay 0): a plane's contexts need only the planes before it, so a z-slice near the
    start of a chunk costs a few planes. Only a full decode can check that the chunk ends
    where it should. An absolute chunk always decodes whole (its levels span it).
    """
    flat = int(np.ravel_multi_index(index, stream.grid))
    shape = tuple(
        min(c, n - i * c) for i, c, n in zip(index, stream.chunk, stream.shape, strict=True)
    )
    start, stop = stream.offsets[flat], stream.offsets[flat + 1]
    absolute = bool(stream.absolute[flat])
    if start == stop and not absolute:
        return np.zeros(shape, np.int64)
    try:
        raw = stream.data[start:stop]
        if absolute:
            tables, step, lo = stream.absolute_tables, stream.step, stream.lo
            return interp.decode(raw, shape[-3:], tables, step, lo, stream.top).reshape(shape)
        tables = (stream.significance, stream.classes, stream.signs, stream.low)
        return chunks.decode(raw, shape, tables, stream.version, planes).reshape(shape)
    except MoecFormatError:
        raise
    except Exception as exc:  # constriction reports a corrupt stream with various builtins
        raise MoecFormatError(f"correction chunk {index} cannot be decoded: {exc}") from exc
