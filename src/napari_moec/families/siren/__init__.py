"""The Mixture-of-Experts SIREN (paper §3): a sine encoder, a ReLU router, batched SIREN
experts and a linear decoder. The first model family and the default.

``codec.py``
    The file side: the header's ``"m"`` and the payload layout (no network code).
``sizing.py``
    The width and the experts a byte budget buys (no network built).
``family.py``
    :data:`FAMILY`, the :class:`~napari_moec.families.base.ModelFamily`: sizing, building,
    the training step, rate control, decoding.
``moe.py``, ``gate.py``, ``sine.py``, ``tutel_backend.py``
    The network: the MoE module, the router, the sine layers, the optional Tutel dispatch.

Importing this package imports no torch network code; ``FAMILY`` is loaded on first access,
so ``format.py`` can read ``codec`` without it.
"""

from __future__ import annotations

__all__ = ["FAMILY"]


def __getattr__(name: str):
    if name == "FAMILY":
        from .family import FAMILY

        return FAMILY
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
