"""The grid family's payload: the bytes between the ``.moec`` header and its CRC.

Torch-free (numpy, constriction and :mod:`napari_moec.entropy`). The outer frame
(:mod:`napari_moec.format`) already holds the magic, the versions, the volume's shape, dtype and
intensity range, the model config (the header's ``"m"``, :mod:`.codec`) and a CRC-32 of every
byte, so none of them is repeated here. Layout (all integers little-endian; ``T`` = stored
network tensors, ``G`` = latent symbol groups, both fixed by the config and the shape)::

    offset  size  field
    0       2     f16 latent step s > 0 (1 unless the budget fit changed it)
    2       2T    f16 scale > 0 of each network tensor (``config.mlp_layout`` order)
    .       G+T   u8 entropy model of each latent group, then of each network tensor
                  (``napari_moec.entropy``: 0 uniform, 1..127 geometric, 128..254 Gaussian)
    .       2     u16 radius R, 1 <= R <= 32767: every integer is in [-R, R]
    .       4k    ANS stream (constriction, u32 words) to the end, consumed exactly: the
                  latent groups level by level, then the network tensors

The shapes of the latent levels follow from the config and the header's shape
(``config.level_shapes``). A level has one group, or with checkerboard contexts six: its even
latents, then the odd ones of each context bucket (:mod:`.context`), each in C order.
A latent is ``integer * s``, a network weight ``integer * scale``.

Reading checks every number before it sizes anything: the config (``GridConfig`` bounds the
latent count by ``MAX_LATENTS`` when it is built), the payload length against the side bytes,
scales and step finite and > 0, model bytes <= 254, the radius, the stream length (a multiple
of 4, consumed exactly). Every failure raises :class:`~napari_moec.errors.MoecFormatError`.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import constriction
import numpy as np

from ... import entropy
from ...errors import ConfigError, MoecFormatError
from .config import GridConfig, mlp_layout
from .context import N_SLOTS, context_slots, even_mask, uses_cb

__all__ = ["GridPayload", "pack_payload", "side_bytes", "unpack_payload"]

_MAX_MODEL = 254
#: Largest integer magnitude (``napari_moec.quantize.MAX_LEVEL``, not imported: it imports torch).
MAX_LEVEL = 32767


@dataclass(frozen=True)
class GridPayload:
    """Integers and scales of a stored grid model: what the bytes say, before any torch."""

    config: GridConfig
    latent_step: float
    latents: tuple[np.ndarray, ...]  # int32, one per level, shape config.grid_shapes[l]
    weights: tuple[np.ndarray, ...]  # int32, mlp_layout shapes
    scales: tuple[float, ...]  # float16-exact, one per network tensor

    def latent_values(self) -> list[np.ndarray]:
        """Float32 latents as the synthesis reads them."""
        step = np.float32(self.latent_step)
        return [q.astype(np.float32) * step for q in self.latents]

    def weight_values(self) -> dict[str, np.ndarray]:
        """Float32 network tensors by layout name."""
        names = [name for name, _ in mlp_layout(self.config)]
        return {
            n: q.astype(np.float32) * np.float32(s)
            for n, q, s in zip(names, self.weights, self.scales, strict=True)
        }


def _groups(q: np.ndarray, cb: bool) -> list[np.ndarray]:
    """Boolean masks of the symbol groups of one level, in coding order."""
    if not cb:
        return [np.ones(q.shape, dtype=bool)]
    slots = context_slots(np.abs(q.astype(np.int64)), even_mask(q.shape))
    return [slots == k for k in range(N_SLOTS)]


def side_bytes(config: GridConfig) -> int:
    """Bytes of a payload besides its ANS stream (what :func:`pack_payload` adds)."""
    groups = sum(N_SLOTS if uses_cb(config.context, g) else 1 for g in config.grid_shapes)
    tensors = len(mlp_layout(config))
    return 2 + 2 * tensors + groups + tensors + 2


def pack_payload(
    config: GridConfig,
    latents: list[np.ndarray],
    weights: list[np.ndarray],
    scales: list[float],
    latent_step: float = 1.0,
) -> bytes:
    """The payload of integer ``latents`` (per level) and ``weights`` (layout order).

    ``scales`` and ``latent_step`` are stored as float16 and must be exact in it (the caller
    rounds them first so that training, the file and decoding see the same numbers).
    """
    layout = mlp_layout(config)
    if not (len(latents) == config.num_levels and len(weights) == len(scales) == len(layout)):
        raise ConfigError("latents/weights/scales do not match the grid config")
    for q, g in zip(latents, config.grid_shapes, strict=True):
        if q.shape != g:
            raise ConfigError(f"latent level of shape {q.shape}, the config needs {g}")
    for q, (name, shape) in zip(weights, layout, strict=True):
        if q.shape != shape:
            raise ConfigError(f"{name} has shape {q.shape}, the config needs {shape}")
    floats = [latent_step, *scales]
    if not all(np.isfinite(v) and v > 0 and float(np.float16(v)) == v for v in floats):
        raise ConfigError("scales and the latent step must be positive and float16-exact")
    tensors = []
    for q, g in zip(latents, config.grid_shapes, strict=True):
        tensors += [q[m] for m in _groups(q, uses_cb(config.context, g))]
    tensors += [q.ravel() for q in weights]
    radius = max(1, max(int(np.abs(t).max(initial=0)) for t in tensors))
    if radius > MAX_LEVEL:
        raise ConfigError(f"an integer of magnitude {radius} > {MAX_LEVEL} cannot be coded")
    models = [entropy.choose_model(t, radius) if t.size else 0 for t in tensors]
    return b"".join(
        [
            struct.pack(f"<{len(floats)}e", *floats),
            bytes(models),
            struct.pack("<H", radius),
            entropy.encode(tensors, models, radius),
        ]
    )


def unpack_payload(payload: bytes, config: GridConfig) -> GridPayload:
    """Parse and check a payload of a model of ``config`` (from the already checked header).

    Raises
    ------
    MoecFormatError
        For any inconsistency (module docstring), never a struct/numpy/constriction error.
    """
    payload = bytes(payload)
    layout = mlp_layout(config)
    side = side_bytes(config)
    if len(payload) < side or (len(payload) - side) % 4:
        raise MoecFormatError(f"grid payload of {len(payload)} bytes does not fit its config")
    floats = struct.unpack_from(f"<{1 + len(layout)}e", payload, 0)
    if not all(math.isfinite(v) and v > 0 for v in floats):
        raise MoecFormatError("invalid latent step or weight scale in grid payload")
    pos = 2 * len(floats)
    n_models = side - pos - 2
    models = list(payload[pos : pos + n_models])
    if max(models) > _MAX_MODEL:
        raise MoecFormatError(f"invalid entropy model byte {max(models)}")
    (radius,) = struct.unpack_from("<H", payload, pos + n_models)
    if not 1 <= radius <= MAX_LEVEL:
        raise MoecFormatError(f"invalid radius {radius}")
    try:
        latents, weights = _decode(config, payload[side:], models, radius)
    except (ValueError, RuntimeError, OverflowError) as exc:
        raise MoecFormatError(f"corrupted grid stream: {exc}") from None
    return GridPayload(config, floats[0], tuple(latents), tuple(weights), tuple(floats[1:]))


def _decode(config: GridConfig, stream: bytes, models: list[int], radius: int):
    words = np.frombuffer(stream, dtype="<u4").astype(np.uint32)
    coder = constriction.stream.stack.AnsCoder(words)
    model_iter = iter(models)

    def pull(count: int) -> np.ndarray:
        table = entropy.model_table(next(model_iter), radius)
        if not count:
            return np.zeros(0, np.int32)
        cat = constriction.stream.model.Categorical(table, perfect=False)
        return coder.decode(cat, count).astype(np.int32) - radius

    latents = []
    for g in config.grid_shapes:
        q = np.zeros(g, dtype=np.int32)
        if uses_cb(config.context, g):  # pass 1: even latents; pass 2: odd, bucket by bucket
            even = even_mask(g)
            q[even] = pull(int(even.sum()))
            for mask in _groups(q, True)[1:]:
                q[mask] = pull(int(mask.sum()))
        else:
            q[...] = pull(q.size).reshape(g)
        latents.append(q)
    weights = [pull(math.prod(s)).reshape(s) for _, s in mlp_layout(config)]
    if not coder.is_empty():
        raise ValueError("the stream has trailing data")
    return latents, weights
