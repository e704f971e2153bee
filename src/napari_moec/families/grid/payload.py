"""The grid family's payload: the bytes between the ``.moec`` header and its CRC.

Torch-free (numpy, constriction and :mod:`napari_moec.entropy`). The outer frame
(:mod:`napari_moec.format`) already holds the magic, the versions, the volume's shape, dtype and
intensity range, the model config (the header's ``"m"``, :mod:`.codec`) and a CRC-32 of every
byte, so none of them is repeated here. Layout (all integers little-endian; ``T`` = stored
network tensors, ``G`` = latent symbol groups with a stored model, ``C`` = levels with the
learned context, all fixed by the config and the shape)::

    offset  size  field
    0       2     f16 latent step s > 0 (1 unless the budget fit changed it)
    2       2T    f16 scale > 0 of each network tensor (``config.mlp_layout`` order)
    .       6C    f16 alpha, beta, gamma (finite) of each learned-context level (:mod:`.learned`)
    .       G+T   u8 entropy model of each latent group, then of each network tensor
                  (``napari_moec.entropy``: 0 uniform, 1..127 geometric, 128..254 Gaussian)
    .       2     u16 radius R, 1 <= R <= 32767: every integer is in [-R, R]
    .       4k    ANS stream (constriction, u32 words) to the end, consumed exactly: the
                  latent groups level by level, then the network tensors

The shapes of the latent levels follow from the config and the header's shape
(``config.level_shapes``). A level of fewer than 512 latents, or without contexts, has one
group. With checkerboard contexts (``"cb"``, :mod:`.context`) it has six: its even latents,
then the odd ones of each context bucket, each in C order. With the learned context
(``"lin"``, :mod:`.learned`) its even latents are one group with a stored model; its odd ones
follow in the stream as residuals ``q - mu`` in groups of equal predicted spread ``j``
(ascending, C order), each coded with model ``learned.model_of(j)`` at radius ``R + 64``, no
model byte stored. ``C`` is 0 for the other contexts, so their bytes are what they were
before ``"lin"``. With ``"cbc"`` (:func:`.context.coarse_slots`) the levels run coarsest
first, and a level that has a coarser one has ten groups: its even latents by the bucket of
the coarser level's ``sum |q|`` around them, then its odd ones as ``"cb"`` groups them; its
coarsest level is coded as ``"cb"`` codes a level.
A latent is ``integer * s``, a network weight ``integer * scale``.

Reading checks every number before it sizes anything: the config (``GridConfig`` bounds the
latent count by ``MAX_LATENTS`` when it is built), the payload length against the side bytes,
scales and step finite and > 0, the context parameters finite, model bytes <= 254, the radius,
the stream length (a multiple of 4, consumed exactly). Every failure raises
:class:`~napari_moec.errors.MoecFormatError`.
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
from .context import (
    CBC_SLOTS,
    N_SLOTS,
    coarse_buckets,
    coarse_slots,
    context_slots,
    even_mask,
    level_kind,
    level_order,
)
from .learned import (
    LIN_FLOATS,
    MEAN_LIMIT,
    fit_level,
    model_of,
    neighbour_sums,
    odd_groups,
    predict,
)

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


def _groups(q: np.ndarray, kind: str, coarse: np.ndarray | None = None) -> list[np.ndarray]:
    """Boolean masks of the symbol groups of one level (:func:`_kind`), in coding order;
    ``coarse``: the next coarser level's integers (``"cbc"``)."""
    if kind == "one":
        return [np.ones(q.shape, dtype=bool)]
    mag, even = np.abs(q.astype(np.int64)), even_mask(q.shape)
    if kind == "cbc":
        slots = coarse_slots(mag, even, np.abs(coarse.astype(np.int64)))
        return [slots == k for k in range(CBC_SLOTS)]
    slots = context_slots(mag, even)
    return [slots == k for k in range(N_SLOTS)]


def _kind(config: GridConfig, level: int) -> str:
    """How a level is coded (:func:`.context.level_kind`)."""
    return level_kind(config.context, config.grid_shapes[level], level == config.num_levels - 1)


def _lin_levels(config: GridConfig) -> list[int]:
    return [i for i in range(config.num_levels) if _kind(config, i) == "lin"]


def side_bytes(config: GridConfig) -> int:
    """Bytes of a payload besides its ANS stream (what :func:`pack_payload` adds)."""
    count = {"cbc": CBC_SLOTS, "cb": N_SLOTS, "lin": 1, "one": 1}
    groups = sum(count[_kind(config, i)] for i in range(config.num_levels))
    tensors = len(mlp_layout(config))
    lin = 2 * LIN_FLOATS * len(_lin_levels(config))
    return 2 + 2 * tensors + lin + groups + tensors + 2


def _lin_parts(q: np.ndarray, params, radius: int):
    """Integer means and the ``(j, mask)`` groups of the odd latents of a learned-context
    level whose even latents ``q`` holds (its odd entries are ignored)."""
    even = even_mask(q.shape)
    s_sum, a_sum = neighbour_sums(q.astype(np.int64), even)
    mu, j = predict(params, s_sum, a_sum, q.ndim)
    return mu, odd_groups(j, ~even)


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
    radius = max(
        1, max(int(np.abs(q).max(initial=0)) for q in (*latents, *weights))
    )  # the largest |integer| of every group: the groups partition the tensors
    if radius > MAX_LEVEL:
        raise ConfigError(f"an integer of magnitude {radius} > {MAX_LEVEL} cannot be coded")
    tensors, models, radii, stored, lin_params = [], [], [], [], []
    for i in level_order(config.context, config.num_levels):
        q, kind = latents[i], _kind(config, i)
        if kind == "lin":
            params = fit_level(q, radius)
            lin_params += params
            even = even_mask(q.shape)
            tensors.append(q[even])
            models.append(entropy.choose_model(q[even], radius) if q[even].size else 0)
            radii.append(radius)
            stored.append(models[-1])
            mu, groups = _lin_parts(q, params, radius)
            for k, mask in groups:
                tensors.append(q[mask] - mu[mask])
                models.append(model_of(k))
                radii.append(radius + MEAN_LIMIT)
            continue
        for m in _groups(q, kind, latents[i + 1] if kind == "cbc" else None):
            tensors.append(q[m])
            models.append(entropy.choose_model(q[m], radius) if q[m].size else 0)
            radii.append(radius)
            stored.append(models[-1])
    for q in weights:
        tensors.append(q.ravel())
        models.append(entropy.choose_model(q.ravel(), radius) if q.size else 0)
        radii.append(radius)
        stored.append(models[-1])
    if any(float(np.float16(v)) != v for v in lin_params):  # pragma: no cover - fit_level
        raise ConfigError("context parameters must be float16-exact")
    return b"".join(
        [
            struct.pack(f"<{len(floats) + len(lin_params)}e", *floats, *lin_params),
            bytes(stored),
            struct.pack("<H", radius),
            entropy.encode(tensors, models, radius, radii),
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
    n_lin = LIN_FLOATS * len(_lin_levels(config))
    floats = struct.unpack_from(f"<{1 + len(layout) + n_lin}e", payload, 0)
    if not all(math.isfinite(v) and v > 0 for v in floats[: 1 + len(layout)]):
        raise MoecFormatError("invalid latent step or weight scale in grid payload")
    if not all(math.isfinite(v) for v in floats[1 + len(layout) :]):
        raise MoecFormatError("invalid learned context parameter in grid payload")
    lin = [floats[1 + len(layout) + k : 4 + len(layout) + k] for k in range(0, n_lin, 3)]
    pos = 2 * len(floats)
    n_models = side - pos - 2
    models = list(payload[pos : pos + n_models])
    if max(models) > _MAX_MODEL:
        raise MoecFormatError(f"invalid entropy model byte {max(models)}")
    (radius,) = struct.unpack_from("<H", payload, pos + n_models)
    if not 1 <= radius <= MAX_LEVEL:
        raise MoecFormatError(f"invalid radius {radius}")
    try:
        latents, weights = _decode(config, payload[side:], models, radius, lin)
    except (ValueError, RuntimeError, OverflowError) as exc:
        raise MoecFormatError(f"corrupted grid stream: {exc}") from None
    scales = floats[1 : 1 + len(layout)]
    return GridPayload(config, floats[0], tuple(latents), tuple(weights), tuple(scales))


def _decode(config: GridConfig, stream: bytes, models: list[int], radius: int, lin: list):
    words = np.frombuffer(stream, dtype="<u4").astype(np.uint32)
    coder = constriction.stream.stack.AnsCoder(words)
    model_iter, lin_iter = iter(models), iter(lin)

    def pull(count: int, model: int | None = None, r: int = radius) -> np.ndarray:
        table = entropy.model_table(next(model_iter) if model is None else model, r)
        if not count:
            return np.zeros(0, np.int32)
        cat = constriction.stream.model.Categorical(table, perfect=False)
        return coder.decode(cat, count).astype(np.int32) - r

    latents: list[np.ndarray | None] = [None] * config.num_levels
    for i in level_order(config.context, config.num_levels):  # "cbc": coarsest first
        g, kind = config.grid_shapes[i], _kind(config, i)
        q = np.zeros(g, dtype=np.int32)
        if kind in ("cb", "cbc"):  # pass 1: even latents; pass 2: odd, bucket by bucket
            even = even_mask(g)
            if kind == "cbc":  # the even latents by the (decoded) coarser level's buckets
                buckets = coarse_buckets(g, np.abs(latents[i + 1].astype(np.int64)))
                for k in range(CBC_SLOTS - N_SLOTS + 1):
                    mask = even & (buckets == k)
                    q[mask] = pull(int(mask.sum()))
            else:
                q[even] = pull(int(even.sum()))
            for mask in _groups(q, "cb")[1:]:  # "cbc"'s odd groups are "cb"'s
                q[mask] = pull(int(mask.sum()))
        elif kind == "lin":  # pass 1: even; pass 2: odd, predicted, by spread
            even = even_mask(g)
            q[even] = pull(int(even.sum()))
            mu, groups = _lin_parts(q, next(lin_iter), radius)
            for k, mask in groups:
                q[mask] = pull(int(mask.sum()), model_of(k), radius + MEAN_LIMIT) + mu[mask]
            if np.abs(q).max(initial=0) > radius:
                raise ValueError("a predicted latent is outside the stored radius")
        else:
            q[...] = pull(q.size).reshape(g)
        latents[i] = q
    weights = [pull(math.prod(s)).reshape(s) for _, s in mlp_layout(config)]
    if not coder.is_empty():
        raise ValueError("the stream has trailing data")
    return latents, weights
