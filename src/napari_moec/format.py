"""The ``.moec`` container, version 1.0. This docstring is the byte-level specification.

Layout (all integers little-endian)::

    offset  size  field
    0       8     magic  b"\\x89MoE\\r\\n\\x1a\\n"  (PNG-style: catches 7-bit and newline mangling)
    8       1     u8  format major version (1)
    9       1     u8  format minor version (0)
    10      2     u16 H, length of the compressed header, 1 <= H <= MAX_HEADER_SIZE
    12      H     header: raw DEFLATE (RFC 1951) of compact UTF-8 JSON, compressed with the
                  preset dictionary ``HEADER_DICT`` of this version
    12+H    P     payload: the network weights (below)
    12+H+P  C     correction: only when the header has "e" (C = its value), the correction
                  stream of a guaranteed maximum error (:mod:`napari_moec.correction_codec`)
    end-4   4     u32 CRC-32 (zlib.crc32) of every byte before it

No padding: at 6000x a whole 256^3 16-bit file is ~5.5 KB, so every byte is budget.

Header JSON (sorted keys; required unless marked optional):

    "s"   shape, list of 3 or 4 ints >= 1
    "a"   axes, str of len(shape) distinct letters from "TCZYX"
    "d"   dtype: "uint8" | "uint16" | "int16" | "float32"
    "r"   [min, max] intensities of the original, finite, min < max
    "n"   [lo, hi] training range the intensities were mapped to, lo < hi
    "m"   model: [in_features, hidden_features, num_experts, top_k, expert_layers,
          gate_hidden, out_features, w0, w0_first] (see ModelConfig)
    "q"   [precision, per_channel 0|1, entropy 0|1] (see QuantConfig)
    "sp"  optional: voxel spacing, list of len(shape) positive floats
    "u"   optional: spacing unit, str
    "t"   optional: training summary {"steps": int, "psnr": float, "seconds": float,
          "device": str, optional "target": float, the PSNR promised by a ``--psnr`` file}
    "f"   optional: model family, str (:mod:`napari_moec.families`); absent means "siren",
          the MoE SIREN this spec's "m" and payload describe. Written only for other
          families, whose "m" and payload their family's codec specifies
          (``families/<name>/codec.py``); a reader that does not know the family raises
          MoecFormatError. (Added without a version change: SIREN files are unchanged, and
          a reader of 1.0 rejects "f" as an unknown key rather than misreading the payload.)
    "e"   optional: C, bytes of the correction stream that follows the payload, int >= 1
          (``--max-error``: every decoded voxel within the bound the stream states). The
          family's payload parsing sees only the P bytes before it. Written only by files
          with a bound (others keep their bytes); added without a version change for the
          same reason as "f": a reader of 1.0 without it rejects "e" as an unknown key, so
          it never decodes such a file without its correction.

Payload (family "siren"; implemented in :mod:`napari_moec.families.siren.codec`). The stored
tensors and their order are part of this spec, not of the network code:
with H = hidden_features, G = gate_hidden, n = num_experts, L = expert_layers, I =
in_features, O = out_features (all from "m")::

    #   name                 shape        role
    1   encoder.weight       (H, I)       first sine layer, y = sin(w0_first (W x + b))
    2   encoder.bias         (H,)
    3   gate.0.weight        (G, H)       router, only when n > 1: ReLU(W x + b)
    4   gate.0.bias          (G,)
    5   gate.1.weight        (G, G)       ReLU(W x + b)
    6   gate.1.bias          (G,)
    7   gate.2.weight        (n, G)       expert logits W x + b (softmax, top-k)
    8   gate.2.bias          (n,)
    .   experts.l.weight     (n, H, H)    l = 0..L-1, expert e: y = sin(w0 (x W[e] + b[e]))
    .   experts.l.bias       (n, 1, H)    l = 0..L-1 (all weights first, then all biases)
    .   decoder.weight       (O, H)       y = W x + b on the gate-weighted expert output
    .   decoder.bias         (O,)

Linear layers store (out, in) and compute ``W x``; the batched experts store (in, out) and
compute ``x W``. :func:`parameter_layout` returns this table for a given "m".

* ``fp32``/``fp16``: the tensors' values, concatenated, raw little-endian floats.
* ``intN``: (1) float16 scales, per tensor in order: 1 value, or with per_channel one per row
  along dim 1 (``prod(shape) / shape[1]`` values) for tensors of 2+ dims; (2) one model byte per
  tensor (see ``entropy``); (3) u16 radius R, every integer is in [-R, R]; (4) the ANS stream
  of all integers (u32 words) to the end of the payload, which it must consume exactly.
  A weight is ``integer * scale``.

Reading checks, in order: size, magic, version (unknown major -> UnsupportedVersionError;
a newer minor of a known major is read, unknown optional keys are then ignored), CRC, header
length, header inflate with an output bound, JSON shape and types, value ranges, then the
payload length against the sizes the model implies. Nothing is allocated from a size that has
not been checked. Every failure raises MoecFormatError.

Tiled stores (OME-Zarr, one network per chunk) use a tile variant of this stream, specified in
:mod:`napari_moec.tiled.tileformat`.
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from dataclasses import dataclass

import numpy as np
import torch

from . import families
from .config import ModelConfig, QuantConfig
from .errors import ConfigError, MoecFormatError, UnsupportedVersionError
from .families.siren.codec import (  # the SIREN payload, named here as before families
    MAX_PARAMETERS,
    count_parameters,
    int_side_bytes,
    layout_group,
    pack_payload,
    parameter_layout,
    unpack_payload,
)
from .jsonfields import compact as _num
from .jsonfields import floats as _floats
from .jsonfields import ints as _ints
from .volumes import SUPPORTED_DTYPES, check_axes

__all__ = [
    "MAGIC",
    "MAX_PARAMETERS",
    "VERSION",
    "Header",
    "TrainingSummary",
    "correction_bytes",
    "count_parameters",
    "fixed_overhead",
    "frame",
    "int_side_bytes",
    "layout_group",
    "pack",
    "pack_payload",
    "parameter_layout",
    "unpack",
    "unpack_payload",
]

MAGIC = b"\x89MoE\r\n\x1a\n"
VERSION = (1, 0)
MAX_HEADER_SIZE = 4096
MAX_HEADER_JSON = 16384
_PREFIX = struct.Struct("<8sBBH")
_CRC = struct.Struct("<I")
#: Preset dictionary of version 1: typical header text, so a header costs ~40-70 bytes.
HEADER_DICT = (
    b'"device":"cuda","psnr":"seconds":"steps":},"u":"mm","um"'
    b'"float32","int16","uint8","uint16","q":["int8",0,1],"r":[0,"s":[64,"sp":[1.0,"t":'
    b'{"device":"cpu","psnr":3{"a":"ZYX","d":"uint16","m":[3,32,2,1,3,16,1,30,30],"n":[-1,1],'
)
_REQUIRED = {"s", "a", "d", "r", "n", "m", "q"}
_KNOWN = _REQUIRED | {"sp", "u", "t", "f", "e"}
_SUMMARY_KEYS = {"steps", "psnr", "seconds", "device"}


@dataclass(frozen=True)
class TrainingSummary:
    """The optional training summary "t" of a file: how its weights were made.

    ``psnr`` is over the original's data range, measured on the weights as stored (None when
    unknown); ``seconds`` is wall-clock training time; ``device`` "cpu" or "cuda";
    ``target_psnr`` the PSNR promised when the file was made for a quality target
    (``--psnr``; stored as ``"target"`` only then, so other files keep their bytes).
    """

    steps: int
    psnr: float | None
    seconds: float
    device: str
    target_psnr: float | None = None

    def to_json(self) -> dict:
        doc = {
            "device": self.device,
            "psnr": self.psnr,
            "seconds": self.seconds,
            "steps": self.steps,
        }
        if self.target_psnr is not None:
            doc["target"] = self.target_psnr
        return doc

    @classmethod
    def from_json(cls, doc: object) -> TrainingSummary:
        if not isinstance(doc, dict) or not set(doc) >= _SUMMARY_KEYS:
            raise MoecFormatError(f"training summary must hold {sorted(_SUMMARY_KEYS)}")
        steps, psnr, seconds, device = (doc[k] for k in ("steps", "psnr", "seconds", "device"))
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise MoecFormatError(f"invalid training steps {steps!r}")
        for name, value in (("psnr", psnr), ("seconds", seconds)):
            if value is None and name == "psnr":
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise MoecFormatError(f"invalid training {name} {value!r}")
            if not math.isfinite(value):
                raise MoecFormatError(f"invalid training {name} {value!r}")
        if not isinstance(device, str) or len(device) > 16:
            raise MoecFormatError(f"invalid training device {device!r}")
        target = doc.get("target")
        if target is not None and (
            isinstance(target, bool)
            or not isinstance(target, int | float)
            or not math.isfinite(target)
            or target <= 0
        ):
            raise MoecFormatError(f"invalid target PSNR {target!r}")
        psnr = None if psnr is None else float(psnr)
        return cls(steps, psnr, float(seconds), device, None if target is None else float(target))


@dataclass(frozen=True)
class Header:
    """Everything a ``.moec`` file says besides the weights."""

    shape: tuple[int, ...]
    axes: str
    dtype: str
    vmin: float
    vmax: float
    model: ModelConfig
    quant: QuantConfig
    norm: tuple[float, float] = (-1.0, 1.0)
    spacing: tuple[float, ...] | None = None
    unit: str | None = None
    train: TrainingSummary | None = None
    #: The model family (:mod:`napari_moec.families`): what ``model`` is a config of and how
    #: the payload is laid out. Stored as ``"f"`` only when not ``families.LEGACY`` (``"siren"``,
    #: the family of a file without the field).
    family: str = "siren"
    #: Bytes of the correction stream after the payload (``"e"``); 0: no bound, no stream.
    correction: int = 0

    @property
    def original_nbytes(self) -> int:
        """Bytes of the volume this header describes, in its dtype."""
        return math.prod(self.shape) * np.dtype(self.dtype).itemsize

    def to_json(self) -> dict:
        doc = {
            "s": list(self.shape),
            "a": self.axes,
            "d": self.dtype,
            "r": [_num(self.vmin), _num(self.vmax)],
            "n": [_num(self.norm[0]), _num(self.norm[1])],
            "m": families.codec(self.family).config_to_json(self.model),
            "q": [self.quant.precision, int(self.quant.per_channel), int(self.quant.entropy)],
        }
        if self.spacing is not None:
            doc["sp"] = [_num(s) for s in self.spacing]
        if self.unit:
            doc["u"] = self.unit
        if self.train is not None:
            doc["t"] = self.train.to_json()
        if self.family != families.LEGACY:
            doc["f"] = self.family  # only other families: SIREN files keep their 1.0 bytes
        if self.correction:
            doc["e"] = self.correction  # only files with a bound
        return doc


def _encode_header(header: Header) -> bytes:
    text = json.dumps(header.to_json(), sort_keys=True, separators=(",", ":"), allow_nan=False)
    comp = zlib.compressobj(9, zlib.DEFLATED, -15, 9, zlib.Z_DEFAULT_STRATEGY, HEADER_DICT)
    return comp.compress(text.encode()) + comp.flush()


def fixed_overhead(header: Header) -> int:
    """Bytes of a file besides the payload (prefix, header, CRC) for this header."""
    return _PREFIX.size + len(_encode_header(header)) + _CRC.size


def pack(header: Header, state: dict[str, torch.Tensor], multiplier: float = 1.0) -> bytes:
    """A whole SIREN file: ``header`` and the weights ``state`` (see :func:`pack_payload`)."""
    return frame(header, pack_payload(header.model, header.quant, state, multiplier))


def frame(header: Header, payload: bytes, correction: bytes = b"") -> bytes:
    """Prefix, compressed header, ``payload``, ``correction`` and CRC: a file around already
    packed weights (and correction stream, whose length ``header.correction`` must state)."""
    if len(correction) != header.correction:
        raise ConfigError(
            f"header states {header.correction} correction bytes, {len(correction)} given"
        )
    head = _encode_header(header)
    if len(head) > MAX_HEADER_SIZE:
        raise ConfigError(f"header too large: {len(head)} bytes > {MAX_HEADER_SIZE}")
    body = _PREFIX.pack(MAGIC, *VERSION, len(head)) + head + payload + correction
    return body + _CRC.pack(zlib.crc32(body))


def correction_bytes(data: bytes, header: Header) -> bytes:
    """The correction stream of a file :func:`unpack` accepted with ``header`` (b"" if none);
    its contents are checked by :func:`napari_moec.correction_codec.parse`."""
    if not header.correction:
        return b""
    return bytes(data[len(data) - _CRC.size - header.correction : len(data) - _CRC.size])


def unpack(data: bytes, *, decode_weights: bool = True) -> tuple[Header, dict | None]:
    """Parse and validate a whole file; return its header and float32 weights (layout names).

    With ``decode_weights=False`` the payload is only length-checked (``moec info``).
    """
    data = bytes(data)
    if len(data) < _PREFIX.size + _CRC.size:
        raise MoecFormatError(f"file too short for a .moec file: {len(data)} bytes")
    magic, major, minor, hlen = _PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise MoecFormatError("not a .moec file (bad magic)")
    if major != VERSION[0]:
        raise UnsupportedVersionError(
            f"format version {major}.{minor} is not supported (this reader reads {VERSION[0]}.x)"
        )
    (crc,) = _CRC.unpack_from(data, len(data) - _CRC.size)
    if zlib.crc32(data[: -_CRC.size]) != crc:
        raise MoecFormatError("checksum mismatch: the file is corrupted or truncated")
    if not 1 <= hlen <= MAX_HEADER_SIZE or _PREFIX.size + hlen > len(data) - _CRC.size:
        raise MoecFormatError(f"bad header length {hlen=} for a {len(data)}-byte file")
    header = _decode_header(data[_PREFIX.size : _PREFIX.size + hlen], minor)
    end = len(data) - _CRC.size - header.correction
    if end < _PREFIX.size + hlen:
        raise MoecFormatError(
            f"header states {header.correction} correction bytes, the file has "
            f"{len(data) - _CRC.size - _PREFIX.size - hlen} after its header"
        )
    payload = data[_PREFIX.size + hlen : end]
    codec = families.codec(header.family)
    weights = codec.unpack_payload(
        header.model, header.quant, payload, decode_weights=decode_weights
    )
    return header, weights


def _decode_header(raw: bytes, minor: int) -> Header:
    try:
        inflate = zlib.decompressobj(-15, HEADER_DICT)
        text = inflate.decompress(raw, MAX_HEADER_JSON)
        if inflate.unconsumed_tail or not inflate.eof:
            raise MoecFormatError("header does not inflate to a bounded JSON document")
        doc = json.loads(text.decode("utf-8"))
    except (zlib.error, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise MoecFormatError(f"unreadable header: {exc}") from None
    if not isinstance(doc, dict):
        raise MoecFormatError("header is not a JSON object")
    keys = set(doc)
    if not keys >= _REQUIRED:
        raise MoecFormatError(f"header misses keys {sorted(_REQUIRED - keys)}")
    if minor <= VERSION[1] and not keys <= _KNOWN:
        raise MoecFormatError(f"header has unknown keys {sorted(keys - _KNOWN)}")
    try:
        return _header_from_json(doc)
    except ConfigError as exc:
        raise MoecFormatError(f"invalid model or quantization in header: {exc}") from None
    except (TypeError, ValueError, OverflowError) as exc:
        raise MoecFormatError(f"invalid header field: {exc}") from None


def _header_from_json(doc: dict) -> Header:
    shape = _ints(doc["s"], 3, 4, 1, 1 << 24, "shape")
    if math.prod(shape) > 1 << 40:
        raise MoecFormatError(f"shape {shape} is too large")
    try:
        axes = check_axes(doc["a"], len(shape))
    except ConfigError:
        raise MoecFormatError(f"invalid axes {doc['a']!r} for shape {shape}") from None
    if doc["d"] not in SUPPORTED_DTYPES:
        raise MoecFormatError(f"unsupported dtype {doc['d']!r}")
    vmin, vmax = _floats(doc["r"], 2, "range")
    lo, hi = _floats(doc["n"], 2, "normalisation range")
    if not (vmin < vmax and lo < hi):
        raise MoecFormatError("empty intensity or normalisation range")
    family = doc.get("f", families.LEGACY)
    if not isinstance(family, str):
        raise MoecFormatError(f"invalid model family {family!r}")
    model = families.codec(family).config_from_json(doc["m"], shape)
    q = doc["q"]
    if (
        not isinstance(q, list)
        or len(q) != 3
        or not isinstance(q[0], str)
        or q[1] not in (0, 1)
        or q[2] not in (0, 1)
        or isinstance(q[1], bool)
    ):
        raise MoecFormatError(f"invalid quantization {q!r}")
    quant = QuantConfig(q[0], bool(q[1]), bool(q[2]))
    spacing = None if doc.get("sp") is None else _floats(doc["sp"], len(shape), "spacing", True)
    unit = doc.get("u")
    if unit is not None and (not isinstance(unit, str) or len(unit) > 16):
        raise MoecFormatError(f"invalid spacing unit {unit!r}")
    train = None if "t" not in doc else TrainingSummary.from_json(doc["t"])
    correction = doc.get("e", 0)
    if isinstance(correction, bool) or not isinstance(correction, int) or correction < 0:
        raise MoecFormatError(f"invalid correction length {correction!r}")
    if "e" in doc and correction == 0:
        raise MoecFormatError('correction length 0 is written as no "e"')
    return Header(
        shape, axes, doc["d"], vmin, vmax, model, quant, (lo, hi), spacing, unit, train, family,
        correction,
    )  # fmt: skip
