"""Unsigned LEB128 varints of at most 5 bytes: the one encoder and checked decoder of the tile
stream (``tiled/tileformat.py``) and the correction stream (``correction_codec.py``)."""

from __future__ import annotations

from .errors import MoecFormatError

__all__ = ["MAX_BYTES", "decode", "encode"]

#: 5 bytes hold 35 bits: every count and length these formats store, and no more is read.
MAX_BYTES = 5


def encode(value: int) -> bytes:
    """``value`` (>= 0) as LEB128: 7 bits a byte, low first, the high bit saying "more"."""
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def decode(data: bytes, pos: int, end: int, what: str, where: str = "") -> tuple[int, int]:
    """The varint at ``pos`` (reading no further than ``end``) and the position after it.

    Raises MoecFormatError, prefixed with ``where`` (e.g. ``"chunk 0.1.2: "``), when the bytes
    end first or the varint is longer than :data:`MAX_BYTES`.
    """
    value = 0
    for i in range(MAX_BYTES):
        if pos + i >= end:
            raise MoecFormatError(f"{where}truncated {what}")
        byte = data[pos + i]
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            return value, pos + i + 1
    raise MoecFormatError(f"{where}{what} is longer than {MAX_BYTES} bytes")
