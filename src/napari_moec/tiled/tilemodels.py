"""What network a tile's bytes buy, for the store's model family: the one place the tiled
engine turns a payload share into a model config.

A SIREN store keeps the tiles' own width/experts rule
(:func:`~napari_moec.families.siren.sizing.tile_network`, the kind-2 tile stream of version 1.0),
so what existing SIREN settings store does not change. Every other family is sized through the
model-family contract: :meth:`ModelFamily.size` with a :class:`TileSizeRequest`, whose
"file" is the tile's payload alone (the tile's own bytes besides its payload are set aside by
the allocator before it shares the budget), and :meth:`ModelFamily.predict_payload_nbytes`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from .. import families
from ..errors import ConfigError
from ..families.base import SizeRequest
from ..families.siren.sizing import predict_payload_nbytes, tile_network
from ..format import Header
from .tileformat import TileSpec

__all__ = ["TileSizeRequest", "smallest_payload", "tile_model_config"]

#: The largest payload the smallest-network search tries (a tile network needs far less).
_SEARCH_LIMIT = 1 << 24


@dataclass(frozen=True)
class TileSizeRequest(SizeRequest):
    """A :class:`SizeRequest` for one tile: ``budget`` is its payload share, and a tile's
    "file" is its payload alone (kind, index, model fields and CRC are reserved apart)."""

    def file_nbytes(self, config: Any, predicted_payload: int) -> int:
        return predicted_payload


def _request(
    spec: TileSpec, index, budget: int, options: Any, quality_target: bool = False
) -> TileSizeRequest:
    values = spec.values
    shape = spec.region_shape(index)
    axes = "ZYX" if len(shape) == 3 else "TZYX"
    header = Header(shape, axes, values.dtype, values.vmin, values.vmax, None,
                    spec.networks.quant, values.norm, family=spec.networks.family)  # fmt: skip
    return TileSizeRequest(header, int(budget), _with_experts(spec, options), quality_target)


def _with_experts(spec: TileSpec, options: Any) -> Any:
    """The family's options with the store's expert count where the user left it to auto (the
    label stride ``spec.networks.experts`` is then what each tile gets)."""
    family = families.get(spec.networks.family)
    options = family.default_options() if options is None else options
    if getattr(options, "num_experts", 1) is None:
        options = replace(options, num_experts=spec.networks.experts)
    return options


def tile_model_config(
    spec: TileSpec,
    index,
    share: int,
    experts: int | None,
    options: Any = None,
    quality_target: bool = False,
) -> Any | None:
    """The model config of tile ``index`` for a payload of ``share`` bytes, or None when no
    network of the store's family fits. ``experts`` (SIREN) is the user's expert count (None:
    the tiles' rule); ``options`` (other families) the family's options or an ``ArchConfig``."""
    if spec.networks.siren:
        sized = tile_network(
            spec.model_config, spec.networks.quant, share, experts, spec.networks.experts
        )
        return None if sized is None else spec.model_config(*sized)
    family = families.get(spec.networks.family)
    try:
        config = family.size(_request(spec, index, share, options, quality_target))
    except ConfigError:
        return None
    if family.predict_payload_nbytes(config, spec.networks.quant) > share:
        return None
    return config


def smallest_payload(
    spec: TileSpec, index, options: Any = None, quality_target: bool = False
) -> int:
    """The payload bytes of the smallest network tile ``index`` can hold (SIREN: width 1, one
    expert; other families: the least share their sizing accepts, found by bisection)."""
    if spec.networks.siren:
        return predict_payload_nbytes(spec.model_config(1, 1), spec.networks.quant)
    lo, hi = 1, 16
    while tile_model_config(spec, index, hi, None, options, quality_target) is None:
        lo, hi = hi, hi * 2
        if hi > _SEARCH_LIMIT:
            raise ConfigError(f"no {spec.networks.family} network fits tile {index}")
    while hi - lo > 1:  # invariant: lo does not fit, hi does
        mid = (lo + hi) // 2
        if tile_model_config(spec, index, mid, None, options, quality_target) is None:
            lo = mid
        else:
            hi = mid
    return hi
