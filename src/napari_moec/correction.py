"""A guaranteed maximum error (``--max-error E``): a correction layer on top of the network.

The network predicts ``y`` (float, in the data's units, before clipping and rounding); the
writer codes, per voxel, an integer ``q = rint((x - clip(y)) / s)``, mostly 0, and every
reader decodes ``final(clip(y) + s q)``, where ``clip`` is to the stream's ``[lo, hi]`` (the
original's range), ``final`` clips again, rounds to an integer for integer dtypes and casts.
This is how SZ and SPERR code their outliers: a uniform quantizer of step ``s = 2 E_c`` leaves
at most ``E_c`` of every residual. The bytes are laid out and entropy-coded by
:mod:`napari_moec.correction_codec`.

Why the bound holds on a reader that is not the writer. The reader evaluates the network on
another device, thread count or batch size, so its ``y'`` differs from the writer's ``y`` by a
few float32 ULPs (``decode`` measures ~1e-7 of the range). The writer therefore quantizes with
``E_c`` below the bound by a margin ``m`` and proves the bound for *every* ``y'`` within ``m``
of ``y``: the decoded value ``final(clip(y') + s q)`` is a non-decreasing function of ``y'``
(clip, IEEE addition, rint and the cast all are), so the set of ``y'`` that keep a voxel
within ``E`` is an interval, and :func:`verify` checks its two ends ``y - m`` and ``y + m``
on every voxel (a residual exactly on a quantizer cell's edge can fail there, a float tie:
``encode`` anchors such voxels, see below, and verifies again). Choices of ``E_c``:

* integer dtypes: ``x`` is an integer, so ``|x - rint(v)| <= floor(E)`` whenever
  ``|x - v| < floor(E) + 1/2``. Hence ``E_c = floor(E) + 1/2 - m`` with
  ``m = min(2^-14 range, 1/4)``: the rounding gives the slack, and E < 1 is lossless;
* float32: ``E_c = E - m - u`` with ``m = min(2^-14 range, E/4)`` and ``u`` half a float32
  spacing at the largest magnitude of the range (the final cast to float32).

``2^-14`` of the range is ~1000 float32 ULPs of a network output in [-1, 1]; 1/4 of an
integer level on uint16 is ~30 of them (a trained ct_head network evaluated in float32 and in
float64 differed by at most 1.5e-6 of the range, 0.006 levels). A predictor that disagrees by
more (e.g. TF32 matmuls) is outside the promise. The one discontinuity of a SIREN-MoE is its
router: where the top-1 and top-2 logits nearly tie, another machine may pick the other
expert. The writer passes those voxels as ``unstable``; they are *anchored*, coded from ``lo``
instead of the prediction, so they hold whatever a reader predicts there.

Wiring (container, Compressor, reader, tiles):

* writer, after the model is packed: ``y = data_units(evaluate(stored_model, shape), norm)``
  from the *stored* (dequantized) weights, then ``raw = encode(volume, y, E, unstable=u)``
  with ``u`` the voxels whose top-1/top-2 router logit gap is below ~1e-4 (MoE with n > 1;
  None for one network or a continuous family); ``encode`` has already decoded ``raw`` and
  verified every voxel at ``y`` and ``y ± margin``
  (:class:`BoundViolation` otherwise: keep no file). ``E`` comes from
  ``resolve_max_error(max_error=..., max_error_rel=..., value_range=(vmin, vmax))``.
* container: store ``raw`` after the weights and its length in the header; the stream holds
  its shape, dtype, bound, step and clip range itself.
* reader, once per file: ``stream = parse(raw, header.shape, header.dtype)``; per region:
  ``apply(stream, data_units(evaluate(model, shape, roi, stride), norm), roi, stride)``
  replaces ``norm.invert(...)`` (never clip or round before ``apply``).
* tiles (:mod:`napari_moec.tiled.tilebound`, tile stream 1.2): one stream per network tile,
  encoded from the tile's own voxels (not its margin) and the prediction the tile decoder
  computes for them (the region's stored network on the tile as a region of interest), with the
  store's bound and the *store's* range as ``[lo, hi]`` (one normalisation for every tile, so
  the margin scales with it); the chunk is decoded from its own bytes and every voxel checked
  before it is written. Readers apply it to exactly the voxels they evaluate (ROI, stride,
  irregular picks: ``tiledecode.decode_tile``); constant and empty tiles are exact.
* ``stream.max_error`` is the promise (``moec info``, the widget's Compare).
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from .correction_codec import DTYPES, MAX_CLASSES, Stream, decode_chunk, encode_chunks, parse
from .decode import grid_shape, parse_roi
from .errors import ConfigError, MoecError

__all__ = [
    "DEFAULT_CHUNK",
    "BoundViolation",
    "Stream",
    "apply",
    "codes",
    "data_units",
    "encode",
    "parse",
    "plan_bound",
    "resolve_max_error",
    "verify",
]

#: Chunk edges along the last three axes: a region decodes the 64^3 chunks it touches.
DEFAULT_CHUNK = (64, 64, 64)
#: Reader/writer disagreement the bound tolerates, as a fraction of the range (see above).
MARGIN_REL = 2.0**-14


class BoundViolation(MoecError, RuntimeError):
    """The decoded correction does not keep every voxel within the promised bound."""


def resolve_max_error(max_error=None, max_error_rel=None, value_range=None) -> float:
    """The absolute bound E from ``max_error`` (data units) or ``max_error_rel`` (× range).

    Raises
    ------
    ConfigError
        Both or neither given, a value that is not a finite number > 0, or a relative bound
        on a constant range.
    """
    if (max_error is None) == (max_error_rel is None):
        raise ConfigError("give exactly one of max_error and max_error_rel")
    name, value = (
        ("max_error", max_error) if max_error is not None else ("max_error_rel", max_error_rel)
    )
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} {value!r} is not a number") from None
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{name} must be a finite number > 0, got {value}")
    if max_error is not None:
        return value
    lo, hi = (float(v) for v in value_range)
    if not hi > lo:
        raise ConfigError(f"max_error_rel needs a data range, got [{lo}, {hi}]")
    return value * (hi - lo)


def plan_bound(max_error: float, dtype, value_range, margin: float | None = None):
    """``(step, margin)`` that keep every voxel within ``max_error`` (see the module doc).

    Raises
    ------
    ConfigError
        ``max_error`` not finite > 0, a margin the bound cannot absorb, or a bound so small
        against the range that a code would need more than 24 bits.
    """
    max_error = resolve_max_error(max_error)
    dtype = np.dtype(dtype)
    lo, hi = (float(v) for v in value_range)
    width = hi - lo
    if dtype.kind in "iu":
        margin = min(MARGIN_REL * width, 0.25) if margin is None else float(margin)
        if not 0 <= margin < 0.5:
            raise ConfigError(f"margin {margin} must be in [0, 0.5) levels for integer data")
        half = math.floor(max_error) + 0.5 - margin
    else:
        margin = min(MARGIN_REL * width, max_error / 4) if margin is None else float(margin)
        cast = float(np.spacing(np.float32(max(abs(lo), abs(hi))))) / 2
        half = max_error - margin - cast
        if not (margin >= 0 and half > 0):
            raise ConfigError(
                f"max_error {max_error} is below float32 resolution of the range "
                f"[{lo}, {hi}] plus margin {margin}"
            )
    step = 2.0 * half
    if width / step + 2 >= 2**MAX_CLASSES:
        raise ConfigError(
            f"max_error {max_error} is too small for the range [{lo}, {hi}]: "
            f"at least {width * 2.0**-MAX_CLASSES:.3g} is needed"
        )
    return step, margin


def data_units(values: np.ndarray, norm) -> np.ndarray:
    """The network's output (training range) in the data's units, float64, neither clipped
    nor rounded: what :func:`encode` and :func:`apply` take. ``norm`` is the file's
    :class:`~napari_moec.sampling.Normalization`. Writer and reader must both use this."""
    return (np.asarray(values, dtype=np.float64) - norm.lo) / norm.scale + norm.vmin


def _check_pair(original: np.ndarray, prediction: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    original = np.asarray(original)
    if original.dtype.name not in DTYPES or original.ndim not in (3, 4):
        raise ConfigError(
            f"original must be a 3D/4D {'/'.join(DTYPES)} array, got "
            f"{original.ndim}D {original.dtype}"
        )
    prediction = np.asarray(prediction)
    if prediction.shape != original.shape or prediction.dtype.kind not in "fiu":
        raise ConfigError(
            f"prediction {prediction.shape} {prediction.dtype} does not match the "
            f"original {original.shape}"
        )
    if not np.isfinite(prediction).all() or not np.isfinite(original).all():
        raise ConfigError("original and prediction must be finite")
    return original, prediction.astype(np.float64)


def encode(
    original: np.ndarray,
    prediction: np.ndarray,
    max_error: float,
    *,
    value_range=None,
    margin: float | None = None,
    unstable: np.ndarray | None = None,
    chunk: tuple[int, int, int] = DEFAULT_CHUNK,
    version: int | None = None,
) -> bytes:
    """The correction stream that keeps every decoded voxel within ``max_error``; verified.

    Parameters
    ----------
    original : ndarray, 3D or 4D, uint8/uint16/int16/float32
        The volume as the user gave it.
    prediction : ndarray of float, same shape
        The stored (quantized) model's decode in the data's units, *before* clipping and
        rounding: ``(out - norm.lo) / norm.scale + norm.vmin`` in float64.
    max_error : float
        The bound E > 0 in the data's units (see :func:`resolve_max_error` for relative).
    value_range : (lo, hi), optional
        What decoded values are clipped to; the original's min and max by default.
    margin : float, optional
        How far a reader's prediction may differ from ``prediction`` (data units).
    unstable : bool ndarray of the volume's shape, optional
        Voxels where a reader's prediction may differ by more than ``margin``: a network that
        is discontinuous there (an MoE whose top-1 and top-2 router logits are nearly tied can
        pick the other expert on another machine). They are coded from ``lo`` instead of the
        prediction (anchored), which costs more bits but holds whatever the reader predicts.
    chunk : three ints
        Chunk edges along the last three axes (random access granularity).
    version : int, optional
        The stream version to write (:data:`~napari_moec.correction_codec.VERSIONS`); None
        writes each and keeps the smallest.

    Returns
    -------
    bytes
        The stream; :func:`apply` on it reproduces the bound.

    Raises
    ------
    ConfigError
        Bad bound, shapes, dtypes or range.
    BoundViolation
        The decoded stream misses the bound (a bug; the file must not be kept).
    """
    original, y = _check_pair(original, prediction)
    if value_range is None:
        value_range = (original.min(), original.max())
    lo, hi = (float(v) for v in value_range)
    if not (lo <= float(original.min()) and float(original.max()) <= hi):
        raise ConfigError(f"value_range [{lo}, {hi}] does not contain the original")
    if np.array([lo, hi], original.dtype).astype(np.float64).tolist() != [lo, hi]:
        raise ConfigError(f"value_range [{lo}, {hi}] is not exact in {original.dtype}")
    if len(chunk) != 3 or not all(isinstance(c, int) and 1 <= c <= 1024 for c in chunk):
        raise ConfigError(f"chunk {chunk!r} must be three ints in 1..1024")
    if unstable is not None:
        unstable = np.asarray(unstable)
        if unstable.shape != original.shape or unstable.dtype != bool:
            raise ConfigError(f"unstable must be a bool mask of shape {original.shape}")
    coding = {"chunk": tuple(chunk), "version": version}
    return _encode(original, y, max_error, lo, hi, margin, unstable, coding, retry=True)


def _encode(original, y, max_error, lo, hi, margin, unstable, coding, *, retry: bool) -> bytes:
    step, margin = plan_bound(max_error, original.dtype, (lo, hi), margin)
    anchors = np.zeros(0, np.int64) if unstable is None else np.flatnonzero(unstable)
    base = np.clip(y, lo, hi)
    base.flat[anchors] = lo
    x = original.astype(np.float64)
    q = np.rint((x - base) / step).astype(np.int64)
    stream = encode_chunks(
        q,
        original=x,
        dtype=original.dtype,
        **coding,
        max_error=float(max_error),
        step=step,
        lo=lo,
        hi=hi,
        anchors=anchors,
    )
    _, misses = _check(original, y, stream, None, margin)
    if misses is not None and not retry:
        raise BoundViolation(misses[1])
    if misses is not None:
        # A residual on a quantizer cell's edge, pushed over by the margin, is a float tie:
        # anchor such voxels (they then ignore the prediction) and verify once more.
        mask = misses[0] if unstable is None else misses[0] | unstable
        return _encode(original, y, max_error, lo, hi, margin, mask, coding, retry=False)
    return stream


def _strides(stride, ndim: int) -> tuple[int, ...]:
    strides = (stride,) * ndim if isinstance(stride, int) else tuple(stride)
    if len(strides) != ndim or any(not isinstance(s, int) or s < 1 for s in strides):
        raise ConfigError(f"stride must be a positive integer or one per axis, got {stride!r}")
    return strides


def _stream(stream) -> Stream:
    if not isinstance(stream, Stream):
        raise ConfigError(f"expected a parsed correction Stream, got {type(stream).__name__}")
    return stream


def codes(stream: Stream, roi=None, stride=1) -> np.ndarray:
    """The int64 codes ``q`` of the grid ``roi[::stride]``, decoding only the chunks it touches
    (0 in absolute chunks, whose values :func:`apply` takes from :func:`_region`).

    ``stream`` comes from :func:`parse`. ``roi`` and ``stride`` take what
    :func:`napari_moec.decode.evaluate` takes, so the result lines up with the network's
    decode of the same region.
    """
    return _region(stream, roi, stride)[0]


def _region(stream: Stream, roi=None, stride=1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(q, values, absolute)`` of the grid ``roi[::stride]``: the network chunks' codes,
    the absolute chunks' decoded values (float64) and the mask of the absolute chunks'
    voxels; each chunk the region touches decoded once."""
    s = _stream(stream)
    slices = parse_roi(roi, s.shape)
    wanted = [
        np.arange(sl.start, sl.stop, st)
        for sl, st in zip(slices, _strides(stride, len(s.shape)), strict=True)
    ]
    q = np.zeros([len(w) for w in wanted], np.int64)
    values = np.zeros(q.shape)
    absolute = np.zeros(q.shape, bool)
    owners = [w // c for w, c in zip(wanted, s.chunk, strict=True)]
    for index in itertools.product(*(np.unique(o).tolist() for o in owners)):
        positions = [np.flatnonzero(o == i) for o, i in zip(owners, index, strict=True)]
        local = [w[p] - i * c for w, p, i, c in zip(wanted, positions, index, s.chunk, strict=True)]
        block = decode_chunk(s, index, planes=int(local[-3].max()) + 1)
        target = np.ix_(*positions)
        if s.absolute[int(np.ravel_multi_index(index, s.grid))]:
            values[target] = block[np.ix_(*local)]
            absolute[target] = True
        else:
            q[target] = block[np.ix_(*local)]
    return q, values, absolute


def apply(stream: Stream, prediction: np.ndarray, roi=None, stride=1) -> np.ndarray:
    """Corrected voxels of ``roi[::stride]`` in the original dtype, from the network's float
    ``prediction`` of that region (data units, not clipped or rounded).

    Raises
    ------
    ConfigError
        The prediction's shape is not the region's or it has NaN/inf (the bound cannot hold).
    MoecFormatError
        A corrupt stream.
    """
    s = _stream(stream)
    y = np.asarray(prediction, dtype=np.float64)
    region = grid_shape(s.shape, roi, _strides(stride, len(s.shape)))
    if y.shape != region:
        raise ConfigError(f"prediction shape {y.shape} is not the region's {region}")
    decoded = _region(s, roi, stride)
    if not np.isfinite(y).all():
        raise ConfigError("prediction has NaN or infinite values; the bound cannot hold")
    return _decoded(s, y, decoded, _anchored(s, roi, stride))


def _anchored(s: Stream, roi=None, stride=1) -> tuple[np.ndarray, ...]:
    """Positions in the grid ``roi[::stride]`` of the stream's anchored voxels."""
    slices = parse_roi(roi, s.shape)
    strides = _strides(stride, len(s.shape))
    index = np.unravel_index(s.anchors, s.shape)
    inside = np.ones(s.anchors.size, bool)
    for i, sl, st in zip(index, slices, strides, strict=True):
        inside &= (i >= sl.start) & (i < sl.stop) & ((i - sl.start) % st == 0)
    return tuple(
        (i[inside] - sl.start) // st for i, sl, st in zip(index, slices, strides, strict=True)
    )


def _decoded(s: Stream, y: np.ndarray, region, anchored) -> np.ndarray:
    """``final(base + s q)``, base the clipped prediction or ``lo`` where anchored; in an
    absolute chunk ``final`` of its decoded values (``region``: :func:`_region`)."""
    q, values, absolute = region
    base = np.clip(y, s.lo, s.hi)
    base[anchored] = s.lo
    return _final(np.where(absolute, values, base + s.step * q), s)


def _final(values: np.ndarray, s: Stream) -> np.ndarray:
    values = np.clip(values, s.lo, s.hi)
    if s.dtype.kind in "iu":
        values = np.rint(values)
    return values.astype(s.dtype)


def verify(
    original: np.ndarray,
    prediction: np.ndarray,
    stream: bytes | Stream,
    max_error: float | None = None,
    *,
    margin: float = 0.0,
) -> float:
    """Check every voxel against the bound and return the largest error at ``prediction``.

    Decodes ``stream`` from its bytes and applies it to ``prediction`` and, when ``margin`` >
    0, to ``prediction ± margin``: by monotonicity (module doc) that proves the bound for every
    reader prediction within ``margin``. The writer calls this before it keeps a file.

    Raises
    ------
    BoundViolation
        Naming how many voxels miss, the worst error and where.
    """
    worst, misses = _check(original, prediction, stream, max_error, margin)
    if misses is not None:
        raise BoundViolation(misses[1])
    return worst


def _check(original, prediction, stream, max_error, margin):
    """``(error at prediction, None)``, or ``(.., (mask of missing voxels, message))``."""
    original, y = _check_pair(original, prediction)
    s = stream if isinstance(stream, Stream) else parse(stream, original.shape, original.dtype)
    if s.shape != original.shape or s.dtype != original.dtype:
        raise ConfigError(
            f"correction is for {s.shape} {s.dtype}, the original is "
            f"{original.shape} {original.dtype}"
        )
    bound = s.max_error if max_error is None else min(float(max_error), s.max_error)
    region = _region(s)
    anchored = _anchored(s)
    x = original.astype(np.float64)
    at_prediction = 0.0
    bad = np.zeros(original.shape, bool)
    message = ""
    # Every shift is checked before answering: the writer anchors *all* the voxels that miss
    # at either end of the margin in one retry (a tie may miss at -m and another at +m).
    for shift in (0.0, -margin, margin) if margin > 0 else (0.0,):
        error = np.abs(_decoded(s, y + shift, region, anchored).astype(np.float64) - x)
        worst = float(error.max())
        at_prediction = at_prediction if shift else worst
        if worst > bound:
            bad |= error > bound
            where = np.unravel_index(int(np.argmax(error)), error.shape)
            message = message or (
                f"exceed max_error {bound} (worst {worst} at "
                f"{tuple(int(i) for i in where)}, prediction shifted by {shift})"
            )
    if message:
        return at_prediction, (bad, f"{int(bad.sum())} voxels {message}")
    return at_prediction, None
