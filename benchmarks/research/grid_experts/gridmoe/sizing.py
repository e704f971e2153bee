"""Choosing a GridMoE for a volume and a byte budget (the study's defaults).

* latent levels: from ``first_level`` down to the level whose largest axis has <= 3 nodes;
  ``first_level`` is the finest level (1 = half resolution) at which the budget still gives
  the latents >= ``MIN_BITS_PER_LATENT`` bits each on average: finer grids at lower rates were
  measured to waste bytes on (cheap but not free) zeros and to train slower;
* expert width from the payload: 16 from 4 kB, 8 from 1.2 kB, else 4 (the MLP is then
  ~5-25% of the file);
* one expert (no router) unless asked: see REPORT.md, "what the router buys".
"""

from __future__ import annotations

import math

from .coding import HEADER_RESERVE
from .interp import level_shapes
from .model import GridConfig

__all__ = ["auto_config"]

MIN_BITS_PER_LATENT = 1.0


def _levels_from(shape, first: int, keep_axis: int = 8) -> int:
    n = 1
    while True:
        g = level_shapes(shape, 1, first + n - 1, keep_axis=keep_axis)[0]
        if max(g) <= 3 or n >= 8:
            return n
        n += 1


def auto_config(shape: tuple[int, ...], budget: int, **overrides) -> GridConfig:
    payload = budget - HEADER_RESERVE
    hidden = 16 if payload >= 4000 else 8 if payload >= 1200 else 4
    mlp_bytes = {16: 400, 8: 130, 4: 50}[hidden]
    latent_bits = 8 * max(32, payload - mlp_bytes - 40)
    keep = overrides.get("keep_axis", 0)  # the main table ran with 8; 0 measured better
    first = 1
    while first < 6:
        n = _levels_from(shape, first, keep)
        count = sum(math.prod(s) for s in level_shapes(shape, n, first, keep_axis=keep))
        if latent_bits / count >= MIN_BITS_PER_LATENT:
            break
        first += 1
    kw = dict(shape=tuple(shape), num_levels=_levels_from(shape, first, keep), first_level=first,
              kernel="cubic", hidden=hidden, context="cb", expert_layers=2)
    kw.update(overrides)
    return GridConfig(**kw)
