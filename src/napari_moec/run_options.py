"""Options by name -> the config dataclasses a run takes: the one translation every front end uses.

The command line (``moec compress``: its parsed flags), the napari widget (its controls' values)
and :func:`napari_moec.compress` (its ``**options``) all hold user options as a flat mapping of
option names (``steps``, ``num_experts``, ``precision``, ...). :func:`configs_from_options`
turns such a mapping into one dataclass per keyword of
:data:`~napari_moec.config.OPTION_CONFIGS` (``arch``, ``train``, ``quant``, ``run``), the
keywords of :class:`~napari_moec.training.Compressor` and of the tiled engine. The dataclasses
validate the values (:class:`~napari_moec.errors.ConfigError` names the bad one); an option not
given keeps its declared default, stated once, in :mod:`napari_moec.config`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from .config import OPTION_CONFIGS, option_fields

__all__ = ["configs_from_options", "option_names"]


def option_names(configs: Mapping[str, type] = OPTION_CONFIGS) -> frozenset[str]:
    """Every option name declared by the dataclasses of ``configs``."""
    return frozenset(f.name for cls in configs.values() for f in option_fields(cls))


def configs_from_options(
    options: Mapping[str, Any],
    base: Mapping[str, Any] | None = None,
    *,
    configs: Mapping[str, type] = OPTION_CONFIGS,
) -> dict[str, Any]:
    """The config dataclasses for the options in ``options``, by keyword.

    Parameters
    ----------
    options
        Option values by name (``{"steps": 500, "num_experts": None, ...}``; None = auto where
        the option allows it). Other names are ignored (a parsed command line also holds its
        input, output and ratio; :func:`option_names` checks for typos where that matters).
    base
        Configs to start from, by keyword (``{"arch": ArchConfig(...), ...}``; a missing or None
        entry is the dataclass's defaults): the options given replace their fields.
    configs
        The dataclasses by keyword (default :data:`~napari_moec.config.OPTION_CONFIGS`).

    Returns
    -------
    dict
        ``{"arch": ArchConfig, "train": TrainConfig, "quant": QuantConfig, "run": RunConfig}``.

    Raises
    ------
    ConfigError
        A value a dataclass rejects.
    """
    base = base or {}
    result = {}
    for key, cls in configs.items():
        given = {f.name: options[f.name] for f in option_fields(cls) if f.name in options}
        start = base.get(key)
        result[key] = cls(**given) if start is None else replace(start, **given)
    return result
