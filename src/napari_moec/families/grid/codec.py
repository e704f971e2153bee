"""The grid family's file side (the contract's ``PayloadCodec``): the header's ``"m"`` and the
payload of :mod:`.payload`. No network code: ``format.py`` reads grid files through ``CODEC``.

``"m"`` is the list of the 9 integers of ``config.FIELDS``: num_levels, first_level, kernel
(0 linear, 1 cubic), hidden, num_experts, top_k, expert_layers, gate_hidden, context (0 none,
1 checkerboard, 2 learned). ``"q"`` is not used by the payload (latents are integers at a
stored step, network tensors nominal int8 at a stored scale); a grid file stores
``["int8", 0, 1]``.
"""

from __future__ import annotations

import numpy as np

from ...errors import ConfigError, MoecFormatError
from .config import GridConfig
from .payload import side_bytes, unpack_payload

__all__ = ["CODEC", "GridCodec", "weights_of"]


def weights_of(payload) -> dict[str, np.ndarray]:
    """The float32 arrays of a :class:`~.payload.GridPayload` by name: ``latents.<level>``
    then the network tensors (``config.mlp_layout`` names)."""
    out = {f"latents.{i}": v for i, v in enumerate(payload.latent_values())}
    out.update(payload.weight_values())
    return out


class GridCodec:
    """:class:`~napari_moec.families.base.PayloadCodec` of the grid family."""

    family = "grid"

    def config_to_json(self, config: GridConfig) -> list[int]:
        return config.to_json()

    def config_from_json(self, doc: object, shape: tuple[int, ...]) -> GridConfig:
        try:  # ranges and the latent count are checked before anything is sized
            return GridConfig.from_json(doc, tuple(shape))
        except ConfigError as exc:
            raise MoecFormatError(f"invalid grid model: {exc}") from None

    def count_parameters(self, config: GridConfig) -> int:
        return config.latent_count + config.network_weight_count

    def describe(self, config: GridConfig) -> tuple[dict, str]:
        c = config
        numbers = {
            "family": "grid",
            "num_experts": c.num_experts,
            "top_k": c.top_k,
            "hidden_features": c.hidden,
            "num_levels": c.num_levels,
            "first_level": c.first_level,
            "kernel": c.kernel,
            "context": c.context,
            "latents": c.latent_count,
            "parameters": self.count_parameters(c),
        }
        router = (
            "no router (one network: at equal bytes and time it measured ahead of 4 experts, "
            "docs/benchmarks/gpu.md; --experts N shows a learned partition)"
            if c.num_experts == 1
            else "router on coordinates + features"
        )
        line = (
            f"grid: {c.num_levels} latent grids from 1/{2**c.first_level} resolution "
            f"({c.latent_count} latents, {c.kernel}, context {c.context}); "
            f"{c.num_experts} ReLU experts (top-{c.top_k}), width {c.hidden}, {router}"
        )
        return numbers, line

    def unpack_payload(self, config, quant, payload, *, decode_weights=True):
        if not decode_weights:
            side = side_bytes(config)
            if len(payload) < side or (len(payload) - side) % 4:
                raise MoecFormatError(f"grid payload of {len(payload)} bytes does not fit")
            return None
        return weights_of(unpack_payload(payload, config))


CODEC = GridCodec()
