"""What Start asks for, read once from the panel: the source layer, its physical metadata, the
ratio and the configs, as one frozen value the runs take.

The widget builds a :class:`RunRequest` on Start (and for each size estimate) with
:func:`make_request`: the Source layer is looked up by name once, its spacing and unit read once,
the settings translated once (``run_options.configs_from_options`` via the settings panel). The
runs (``widget_single``, ``widget_tiled``) and the estimates take the request and never reach
back into the panel. No Qt here.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..config import ArchConfig, BoundConfig, QuantConfig, RunConfig, TrainConfig
from ..errors import ConfigError
from .widget_lifecycle import is_lazy, is_volume, no_source_message, volume_data
from .widget_tiled_settings import TILED_ABOVE_VOXELS

__all__ = ["RunRequest", "TiledOptions", "find_source", "make_request"]


@dataclass(frozen=True)
class TiledOptions:
    """The "Big volumes" settings: when to tile ("auto" or "tiled") and the tiled engine's
    tile edge (None: auto), local workers (None: one per core) and scheduler address."""

    mode: str = "auto"
    tile: int | None = None
    workers: int | None = None
    scheduler: str | None = None

    @property
    def engine_kwargs(self) -> dict[str, Any]:
        """Keywords of :class:`~napari_moec.tiled.runner.TiledCompressor` (no ``mode``)."""
        return {"tile": self.tile or "auto", "workers": self.workers, "scheduler": self.scheduler}


@dataclass(frozen=True)
class RunRequest:
    """One compression as the user asked for it.

    ``layer`` is the napari Image layer (its full-resolution data is :attr:`data`, never read
    here); ``spacing``/``unit`` its physical metadata; ``arch``/``train``/``quant``/``run`` the
    core's configs; ``tiled`` the big-volume settings; ``bound`` the guaranteed maximum error
    (single volumes only, for now).
    """

    layer: Any
    spacing: tuple[float, ...]
    unit: str | None
    ratio: float
    arch: ArchConfig
    train: TrainConfig
    quant: QuantConfig
    run: RunConfig
    tiled: TiledOptions = field(default_factory=TiledOptions)
    bound: BoundConfig = field(default_factory=BoundConfig)

    @property
    def name(self) -> str:
        return self.layer.name

    @property
    def data(self):
        """The full-resolution array (level 0 of a multiscale), not read."""
        return volume_data(self.layer)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.data.dtype)

    @property
    def configs(self) -> dict[str, Any]:
        """The config keywords of ``Compressor`` and ``TiledCompressor``."""
        return {
            "arch": self.arch,
            "train": self.train,
            "quant": self.quant,
            "run": self.run,
            "bound": self.bound,
        }

    @property
    def physical(self) -> dict[str, Any]:
        """The ``spacing`` and ``unit`` keywords."""
        return {"spacing": self.spacing, "unit": self.unit}

    @property
    def tiled_mode(self) -> bool:
        """Whether this is compressed tile by tile on Dask (from metadata only): the mode says
        "tiled", the layer is lazy (dask, zarr, multiscale), or it is bigger than
        ``TILED_ABOVE_VOXELS``."""
        return (
            self.tiled.mode == "tiled"
            or is_lazy(self.layer)
            or math.prod(self.shape) > TILED_ABOVE_VOXELS
        )


def find_source(layers, name: str):
    """The 3D/4D Image layer called ``name`` in ``layers``, or None."""
    for layer in layers:
        if layer.name == name and is_volume(layer):
            return layer
    return None


def _unit(layer) -> str | None:
    """The layer's unit when every axis has the same physical one (pixels are no unit)."""
    units = {format(u, "~") for u in layer.units}
    return units.pop() if len(units) == 1 and "px" not in units else None


def make_request(
    layers,
    name: str,
    settings: Callable[[], dict[str, Any]],
    tiled: Callable[[], dict[str, Any]],
) -> RunRequest:
    """The request for the layer ``name`` of ``layers`` with the settings panel's values:
    ``settings()`` gives the ratio and the configs (``compressor_kwargs``), ``tiled()`` the
    big-volume values. The source is checked first, so its message wins over a setting's.

    Raises
    ------
    ConfigError
        No usable source layer (the message says why), or a setting the core rejects.
    """
    layer = find_source(layers, name)
    if layer is None:
        raise ConfigError(no_source_message(layers).removeprefix("MoEC: "))
    settings = settings()
    return RunRequest(
        layer=layer,
        spacing=tuple(float(s) for s in layer.scale),
        unit=_unit(layer),
        ratio=settings["ratio"],
        arch=settings["arch"],
        train=settings["train"],
        quant=settings["quant"],
        run=settings["run"],
        tiled=TiledOptions(**tiled()),
        bound=settings.get("bound") or BoundConfig(),
    )
