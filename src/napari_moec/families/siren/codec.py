"""The MoE SIREN's file side: the header's ``"m"`` and the payload layout, as
:mod:`napari_moec.format`'s specification states them (the tensor table and the ``fp``/``intN``
payloads). No network code: ``format.py`` reads every SIREN file through :data:`CODEC`.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping
from functools import lru_cache

import numpy as np
import torch

from ... import entropy
from ...config import ModelConfig, QuantConfig
from ...errors import MoecFormatError
from ...jsonfields import compact as _num
from ...jsonfields import floats, ints
from ...quantize import MAX_LEVEL, dequantize, quantize

__all__ = [
    "CODEC",
    "MAX_PARAMETERS",
    "SirenCodec",
    "count_parameters",
    "int_side_bytes",
    "layout_group",
    "pack_payload",
    "parameter_layout",
    "unpack_payload",
]

#: The most stored numbers a reader accepts (checked before any allocation).
MAX_PARAMETERS = 1 << 26


class SirenCodec:
    """:class:`~napari_moec.families.base.PayloadCodec` of the MoE SIREN."""

    family = "siren"

    def config_to_json(self, config: ModelConfig) -> list:
        m = config
        return [
            m.in_features,
            m.hidden_features,
            m.num_experts,
            m.top_k,
            m.expert_layers,
            m.gate_hidden,
            m.out_features,
            _num(m.w0),
            _num(m.w0_first),
        ]

    def config_from_json(self, doc: object, shape: tuple[int, ...]) -> ModelConfig:
        if not isinstance(doc, list) or len(doc) != 9:
            raise MoecFormatError("model must be a list of 9 numbers")
        dims = ints(doc[:7], 7, 7, 0, 4096, "model")
        w0, w0_first = floats(doc[7:], 2, "model frequencies")
        model = ModelConfig(*dims, w0=w0, w0_first=w0_first)
        if model.in_features != len(shape):
            raise MoecFormatError(
                f"model has {model.in_features} inputs for a {len(shape)}D volume"
            )
        return model

    def count_parameters(self, config: ModelConfig) -> int:
        return count_parameters(config)

    def unpack_payload(self, config, quant, payload, *, decode_weights=True):
        return unpack_payload(config, quant, payload, decode_weights=decode_weights)

    def describe(self, config: ModelConfig) -> tuple[dict, str]:
        m = config
        numbers = {
            "hidden_features": m.hidden_features,
            "num_experts": m.num_experts,
            "top_k": m.top_k,
            "expert_layers": m.expert_layers,
            "gate_hidden": m.gate_hidden,
            "w0": m.w0,
            "w0_first": m.w0_first,
            "parameters": count_parameters(m),
        }
        line = (
            f"{m.num_experts} experts (top-{m.top_k}), width {m.hidden_features}, "
            f"{m.expert_layers} layers each, router width {m.gate_hidden}, w0 {m.w0}"
        )
        return numbers, line


@lru_cache(maxsize=64)  # rate control asks ~25 times per file
def parameter_layout(model: ModelConfig) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """Names and shapes of the stored tensors, in file order: the table of the module docstring.

    Computed from the architecture alone (no network is built), so the file format does not
    depend on how the network modules name their attributes.
    """
    h, g, n = model.hidden_features, model.gate_hidden, model.num_experts
    layout: list[tuple[str, tuple[int, ...]]] = [
        ("encoder.weight", (h, model.in_features)),
        ("encoder.bias", (h,)),
    ]
    if n > 1:
        layout += [
            ("gate.0.weight", (g, h)),
            ("gate.0.bias", (g,)),
            ("gate.1.weight", (g, g)),
            ("gate.1.bias", (g,)),
            ("gate.2.weight", (n, g)),
            ("gate.2.bias", (n,)),
        ]
    layout += [(f"experts.{i}.weight", (n, h, h)) for i in range(model.expert_layers)]
    layout += [(f"experts.{i}.bias", (n, 1, h)) for i in range(model.expert_layers)]
    layout += [("decoder.weight", (model.out_features, h)), ("decoder.bias", (model.out_features,))]
    return tuple(layout)


def layout_group(name: str) -> str:
    """The group of a layout tensor (``"experts.1.weight"`` -> ``"experts"``): ``encoder``,
    ``gate``, ``experts`` or ``decoder``, the unit whose precision the rate control sets."""
    return name.split(".", 1)[0]


def count_parameters(model: ModelConfig) -> int:
    """Stored parameters of ``model``."""
    return sum(math.prod(shape) for _, shape in parameter_layout(model))


def _scale_count(shape: tuple[int, ...], per_channel: bool) -> int:
    return math.prod(shape) // shape[1] if per_channel and len(shape) >= 2 else 1


def int_side_bytes(model: ModelConfig, quant: QuantConfig) -> int:
    """Payload bytes of an ``intN`` file besides the coded stream: scales, models, radius."""
    shapes = [s for _, s in parameter_layout(model)]
    return sum(2 * _scale_count(s, quant.per_channel) + 1 for s in shapes) + 2


def pack_payload(
    model: ModelConfig,
    quant: QuantConfig,
    state: dict[str, torch.Tensor],
    multiplier: float = 1.0,
    extra_bits: Mapping[str, int] | None = None,
) -> bytes:
    """The payload bytes of a network's float weights ``state`` (keyed by layout names).

    For ``intN`` the nominal quantization scale of every tensor is multiplied by
    ``multiplier`` (> 1 coarser, < 1 finer): the rate controller's knob. ``extra_bits`` maps a
    layout group (the name before the first dot: ``encoder``, ``gate``, ``experts``,
    ``decoder``) to bits of precision added to (or, negative, taken from) its tensors: their
    scale is further multiplied by ``2**-bits``. Every scale is stored, so a reader needs
    neither knob.
    """
    layout = parameter_layout(model)
    tensors = [state[name].detach().to("cpu", torch.float32) for name, _ in layout]
    if quant.is_float:
        dtype = "<f4" if quant.precision == "fp32" else "<f2"
        return b"".join(t.numpy().astype(dtype).tobytes() for t in tensors)
    extra = extra_bits or {}
    steps = [multiplier * 2.0 ** -extra.get(layout_group(name), 0) for name, _ in layout]
    ints, scales = zip(
        *(
            quantize(t, quant.bits, quant.per_channel, step)
            for t, step in zip(tensors, steps, strict=True)
        ),
        strict=True,
    )
    q = [i.numpy() for i in ints]
    radius = max(1, max(int(np.abs(a).max(initial=0)) for a in q))
    models = [entropy.choose_model(a, radius) for a in q] if quant.entropy else [0] * len(q)
    return b"".join(
        [s.numpy().astype("<f2").tobytes() for s in scales]
        + [bytes(models), struct.pack("<H", radius), entropy.encode(q, models, radius)]
    )


def unpack_payload(
    model: ModelConfig, quant: QuantConfig, payload: bytes, *, decode_weights: bool = True
) -> dict[str, torch.Tensor] | None:
    """Validate a payload against the architecture and return its float32 weights by layout
    name (None with ``decode_weights=False``). Raises MoecFormatError for any inconsistency."""
    shapes = parameter_layout(model)
    counts = [math.prod(s) for _, s in shapes]
    if sum(counts) > MAX_PARAMETERS:
        raise MoecFormatError(f"model has {sum(counts)} parameters > {MAX_PARAMETERS}")
    if quant.is_float:
        itemsize = quant.bits // 8
        if len(payload) != sum(counts) * itemsize:
            raise MoecFormatError(
                f"payload is {len(payload)} bytes, the model needs {sum(counts) * itemsize}"
            )
        if not decode_weights:
            return None
        flat = np.frombuffer(payload, dtype="<f4" if itemsize == 4 else "<f2")
        values = np.split(flat.astype(np.float32), np.cumsum(counts)[:-1])
    else:
        n_scales = [_scale_count(s, quant.per_channel) for _, s in shapes]
        side = int_side_bytes(model, quant)
        if len(payload) < side or (len(payload) - side) % 4:
            raise MoecFormatError(f"payload of {len(payload)} bytes does not fit the model")
        if not decode_weights:
            return None
        scales = np.frombuffer(payload, "<f2", sum(n_scales)).astype(np.float32)
        if not (np.isfinite(scales).all() and (scales > 0).all()):
            raise MoecFormatError("invalid quantization scale in payload")
        pos = 2 * sum(n_scales)
        models = list(payload[pos : pos + len(shapes)])
        (radius,) = struct.unpack_from("<H", payload, pos + len(shapes))
        if not 1 <= radius <= MAX_LEVEL:
            raise MoecFormatError(f"invalid quantization radius {radius}")
        try:
            ints = entropy.decode(payload[side:], counts, models, radius)
        except (ValueError, RuntimeError, OverflowError) as exc:
            raise MoecFormatError(f"corrupted weight stream: {exc}") from None
        scale_parts = np.split(scales, np.cumsum(n_scales)[:-1])
        values = [
            _dequantize_flat(i, sc, s, quant.per_channel)
            for i, sc, (_, s) in zip(ints, scale_parts, shapes, strict=True)
        ]
    return {
        name: torch.from_numpy(np.ascontiguousarray(v).reshape(shape))
        for (name, shape), v in zip(shapes, values, strict=True)
    }


def _dequantize_flat(ints: np.ndarray, scales: np.ndarray, shape, per_channel: bool) -> np.ndarray:
    q = torch.from_numpy(ints.reshape(shape))
    if per_channel and len(shape) >= 2:
        scale_shape = (shape[0], 1, *shape[2:])
    else:
        scale_shape = (1,) * len(shape)
    return dequantize(q, torch.from_numpy(scales.reshape(scale_shape))).numpy()


#: The codec ``format.py`` dispatches to for files of this family.
CODEC = SirenCodec()
