"""Model families: the kinds of network a ``.moec`` file can hold, side by side.

Layout (the families README)
----------------------------
``families/base.py``
    The contract: :class:`~.base.ModelFamily` (network side: size, build, train, store,
    rebuild, decode), :class:`~.base.PayloadCodec` (file side, no network code),
    :class:`~.base.FamilyTrainer` (one optimiser step), :class:`~.base.DecodableModel`.
    Read its docstring before writing a family.
``families/siren/``
    Today's Mixture-of-Experts SIREN (the default): ``codec.py`` is the header's ``"m"`` and
    the payload layout of ``format.py``'s spec, ``sizing.py`` the width and experts a budget
    buys, ``family.py`` the :class:`~.base.ModelFamily`, the network modules beside them.
``families/<name>/``
    A further family: ``codec.py`` with ``CODEC``, ``__init__.py`` exposing ``FAMILY``.

This module imports no torch: ``format.py`` calls :func:`codec` to read a file's payload;
:func:`get` imports the network side on first use.

Examples
--------
>>> from napari_moec import families
>>> families.codec("siren").family
'siren'
>>> families.get("siren").name                                  # doctest: +SKIP
'siren'
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

from ..errors import ConfigError, MoecFormatError

if TYPE_CHECKING:
    from .base import ModelFamily, PayloadCodec

__all__ = ["DEFAULT", "FAMILIES", "LEGACY", "codec", "get"]

#: Registered family names.
FAMILIES = ("siren", "grid")
#: The family used when none is asked for: the grid family, which reaches a given quality in a
#: fraction of the SIREN family's time and stores better at equal bytes (docs/benchmarks.md).
DEFAULT = "grid"
#: The family of every ``.moec`` file without a family field: files written before a second
#: family existed, and SIREN files today (their bytes are unchanged, tests/test_golden_bytes.py).
LEGACY = "siren"


def get(name: str = DEFAULT) -> ModelFamily:
    """The family ``name`` (network side; imports torch). Raises ConfigError for an unknown
    name."""
    if name not in FAMILIES:
        raise ConfigError(f"unknown model family {name!r}; known: {', '.join(FAMILIES)}")
    return import_module(f".{name}", __name__).FAMILY


def codec(name: str) -> PayloadCodec:
    """The file side of family ``name`` (no network code). Raises MoecFormatError for a name
    this version does not know: it only ever comes from a file's header."""
    if name not in FAMILIES:
        raise MoecFormatError(f"unknown model family {name!r} (known: {', '.join(FAMILIES)})")
    return import_module(f".{name}.codec", __name__).CODEC
