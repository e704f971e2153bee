"""Declaring a user option once: :func:`option` puts a field's default, range, choices and help
in its dataclass metadata; :func:`check_options` validates a config against it; the CLI and the
napari widget build their flags and controls from :func:`option_fields`.
"""

from __future__ import annotations

import math
from dataclasses import field, fields
from typing import Any

from .errors import ConfigError

__all__ = ["check_options", "option", "option_fields"]


def option(
    default: Any,
    help: str,
    *,
    lo: float | None = None,
    hi: float | None = None,
    open_lo: bool = False,
    open_hi: bool = False,
    choices: tuple | None = None,
    ui: str | None = "advanced",
    label: str | None = None,
    ui_step: float | None = None,
    ui_max: float | None = None,
    auto: str | None = None,
    cli: str | None = None,
) -> Any:
    """A dataclass field that declares a user option.

    Parameters
    ----------
    default
        The default value (None together with ``auto`` means "chosen by napari-moec").
    help
        One sentence for ``--help``, tooltips and docs.
    lo, hi, open_lo, open_hi
        The valid range (closed unless ``open_*``); None means unbounded on that side.
    choices
        The valid values, for string options.
    ui
        Where the napari widget shows it: "basic", "advanced", or None (not shown).
    label, ui_step, ui_max
        The widget's row label, spin-box step, and upper bound where the range is unbounded.
    auto
        What None means (e.g. "2, or 1 for tiny budgets"): the option may be left to napari-moec.
    cli
        The command line flag when it is not ``--`` + the field name with dashes (the CLI
        accepts both spellings).
    """
    meta = {
        "help": help,
        "lo": lo,
        "hi": hi,
        "open_lo": open_lo,
        "open_hi": open_hi,
        "choices": choices,
        "ui": ui,
        "label": label,
        "ui_step": ui_step,
        "ui_max": ui_max,
        "auto": auto,
        "cli": cli,
    }
    return field(default=default, metadata={"option": meta})


def option_fields(cls) -> list:
    """The dataclass fields of ``cls`` declared with :func:`option`, in declaration order."""
    return [f for f in fields(cls) if "option" in f.metadata]


def _describe_range(meta: dict) -> str:
    lo = "-inf" if meta["lo"] is None else f"{meta['lo']:g}"
    hi = "inf" if meta["hi"] is None else f"{meta['hi']:g}"
    return f"{'(' if meta['open_lo'] else '['}{lo}, {hi}{')' if meta['open_hi'] else ']'}"


def check_options(obj) -> None:
    """Validate every option field of a config dataclass against its declaration."""
    for f in option_fields(type(obj)):
        meta = f.metadata["option"]
        value = getattr(obj, f.name)
        if value is None and (meta["auto"] is not None or f.default is None):
            continue
        if meta["choices"] is not None:
            if value not in meta["choices"]:
                raise ConfigError(f"{f.name} must be one of {meta['choices']}, got {value!r}")
            continue
        if f.type in ("bool", bool):
            if not isinstance(value, bool):
                raise ConfigError(f"{f.name} must be True or False, got {value!r}")
            continue
        integral = "int" in str(f.type) and "float" not in str(f.type)
        if isinstance(value, bool) or not isinstance(value, int | float):
            kind = "an integer" if integral else "a number"
            raise ConfigError(f"{f.name} must be {kind} in {_describe_range(meta)}, got {value!r}")
        if integral and not isinstance(value, int):
            raise ConfigError(
                f"{f.name} must be an integer in {_describe_range(meta)}, got {value!r}"
            )
        lo, hi = meta["lo"], meta["hi"]
        bad = not math.isfinite(value)
        if lo is not None:
            bad = bad or (value <= lo if meta["open_lo"] else value < lo)
        if hi is not None:
            bad = bad or (value >= hi if meta["open_hi"] else value > hi)
        if bad:
            kind = "an integer" if integral else "a number"
            raise ConfigError(f"{f.name} must be {kind} in {_describe_range(meta)}, got {value!r}")
