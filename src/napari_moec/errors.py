"""Exception hierarchy.

Every error a user can cause derives from :class:`MoecError`, and each also mixes in the
builtin a caller would expect (``ValueError`` for bad input, ``RuntimeError`` for a
training failure), the way tifffile's ``TiffFileError`` is a ``ValueError``.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "MoecError",
    "MoecFormatError",
    "TrainingError",
    "UnsupportedVersionError",
]


class MoecError(Exception):
    """Base class of all napari-moec errors."""


class ConfigError(MoecError, ValueError):
    """A setting or an input volume that cannot be compressed as asked."""


class MoecFormatError(MoecError, ValueError):
    """A ``.moec`` file that is not valid: wrong magic, truncated, corrupted or hostile."""


class UnsupportedVersionError(MoecFormatError):
    """A ``.moec`` file written by a format version this reader does not know."""


class TrainingError(MoecError, RuntimeError):
    """Training failed, e.g. the loss became NaN or infinite."""
