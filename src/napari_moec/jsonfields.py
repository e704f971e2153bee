"""Checked JSON fields of file headers: lists of bounded ints and finite floats. Shared by
``format.py`` and the families' codecs (no network code, no torch)."""

from __future__ import annotations

import math

from .errors import MoecFormatError

__all__ = ["compact", "floats", "ints"]


def compact(x: float) -> float | int:
    """``x`` as the shortest JSON number of the same value (30.0 -> 30)."""
    x = float(x)
    return int(x) if x.is_integer() and abs(x) < 2**53 else x


def ints(value, n_min, n_max, lo, hi, what) -> tuple[int, ...]:
    if not isinstance(value, list) or not n_min <= len(value) <= n_max:
        raise MoecFormatError(f"{what} must be a list of {n_min}-{n_max} items")
    for v in value:
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise MoecFormatError(f"{what} has an invalid entry {v!r}")
    return tuple(value)


def floats(value, n, what, positive=False) -> tuple[float, ...]:
    if not isinstance(value, list) or len(value) != n:
        raise MoecFormatError(f"{what} must be a list of {n} numbers")
    for v in value:
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise MoecFormatError(f"{what} has an invalid entry {v!r}")
        if positive and not v > 0:
            raise MoecFormatError(f"{what} must be positive, got {v!r}")
    return tuple(float(v) for v in value)
