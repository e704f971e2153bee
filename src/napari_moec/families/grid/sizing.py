"""Choosing a grid model for a volume and a payload budget.

* Levels: from ``first_level`` down to the level whose largest axis has <= 3 nodes (at most
  12). ``first_level`` is the finest level (0: the voxel lattice) at which the latents get at least
  ``MIN_BITS_PER_LATENT`` bits each on average: finer grids at lower rates spend bytes on
  (cheap, not free) zeros and train slower.
* Width from the payload: 16 from 4 kB, 8 from 1.2 kB, else 4 (the network is then ~5-25%
  of the payload).
* One expert unless asked (``num_experts``): the router's cost is measured in REPORT.md 6.
  A routed model's gate is ``ROUTED_GATE_HIDDEN`` wide, and the bytes its network takes
  (router and every expert) are priced before the levels are chosen.

The prototype used 1.0 bit per latent; at ct_head 1024x that chose levels from 1/8 and
reached 24.24 dB in 60 s, while levels from 1/4 reached 25.82 (REPORT.md 1). 0.5 moves that
case to 1/4 and leaves the 64x and 256x choices of ct_head and hipct as measured (1/2 and 1/4).
Here, 1000 steps on a CPU (``benchmarks/grid_fill.py ct_head 1024 --steps 1000``): levels
from 1/8, 24.80 dB; from 1/4, 25.16 and 25.56 dB (seeds 0 and 1). It also moves hipct 1024x
from 1/8 to 1/4 and mri4d 1024x/256x to 1/8 and 1/4: not measured.

The search starts at level 0, latents on the voxel lattice itself (Cool-chic's finest level),
which the rule picks only at high rates (about 1 bit a voxel: 16x of 16-bit data). Starting
at 1/2 left those files half empty: the 1/2-resolution latents could not hold the budget in
2000 steps. Measured at 2000 steps (``benchmarks/grid_fill.py V 16 --first-level 0|1``, one
thread): hipct 16x 33.02 dB filling 46 % of the payload -> 36.22 dB at 96 %; ct_head 16x
34.62 at 47 % -> 40.64 at 100 %; mri4d 16x 32.49 at 37 % -> 36.61 at 98 %.
"""

from __future__ import annotations

import math

from .config import MAX_LATENTS, GridConfig, level_shapes, mlp_layout
from .payload import side_bytes

__all__ = ["MIN_BITS_PER_LATENT", "ROUTED_GATE_HIDDEN", "auto_config", "network_bytes"]

MIN_BITS_PER_LATENT = 0.5
#: The router's hidden width in routed models (``GridConfig.gate_hidden`` is 8): its ~100
#: weights at width 8 are a fifth of a 512-byte file. Measured at 2000 steps, one thread, 4
#: experts, both with the balanced start (``benchmarks/grid_fill.py V R --experts 4 --set
#: gate_hidden=4|8``): hipct 1024x 27.96 against 27.46 dB, 64x 32.37 / 32.21, ct_head 256x
#: 27.28 / 27.85 (seed 1), macaque 256x 38.40 / 38.38: the bytes at the smallest budgets, a
#: wash elsewhere. (A gate of 4 first ran without the balanced start, which needed 2 units a
#: coordinate, and measured better than the balanced gate of 8 in 12 of 13 pairs, by 0.25 to
#: 2.1 dB: the random start's gain, not the width's; but that random start left a 40-step
#: widget run with one label. notes.md, session 13.)
ROUTED_GATE_HIDDEN = 4
_NETWORK_BYTES = {16: 400, 8: 130, 4: 50}  # measured network + side bytes, nominal int8


def _levels_from(shape: tuple[int, ...], first: int) -> int:
    n = 1
    while n < 12 and max(level_shapes(shape, 1, first + n - 1)[0]) > 3:
        n += 1
    return n


def auto_config(
    shape: tuple[int, ...], payload_bytes: int, *, finest_level: int = 0, **overrides
) -> GridConfig:
    """A :class:`GridConfig` for ``shape`` and a payload of ``payload_bytes``; ``overrides``
    replace any field (``num_experts=4`` for a partition). ``finest_level``: where the search
    for ``first_level`` starts (1 under a quality target, whose budget is only a ceiling: at
    the 8x ceiling the lattice level would always be chosen, and a 150-step tile at 20 dB
    did not reach its target with it)."""
    hidden = overrides.get("hidden") or (
        16 if payload_bytes >= 4000 else 8 if payload_bytes >= 1200 else 4
    )

    routed = {"gate_hidden": ROUTED_GATE_HIDDEN} if overrides.get("num_experts", 1) > 1 else {}

    def config(first: int) -> GridConfig:
        kw = {
            "shape": tuple(shape),
            "num_levels": _levels_from(shape, first),
            "first_level": first,
            "hidden": hidden,
        }
        return GridConfig(**(kw | routed | overrides))

    first = overrides.get("first_level")
    if first is None:
        first = finest_level
        while first < 12:
            count = sum(n for n in _counts(shape, first))
            if count <= MAX_LATENTS:
                latent_bits = 8 * max(32, payload_bytes - _network_estimate(config(first)))
                if latent_bits / count >= MIN_BITS_PER_LATENT:
                    break
            first += 1
    return config(first)


def _network_estimate(cfg: GridConfig) -> int:
    """The bytes of ``cfg``'s payload the latents cannot have: for one network of a width in
    the measured table, the table; else (routed models, the lean ladder's width 2) the
    predicted network and side bytes. The table alone priced every model as one network of
    its width, and a width outside it as 400 bytes: at 1024x a 4-expert model (a router of
    ~100 weights, 4 experts) was sized for latents it could not afford, and the lean ladder's
    width 2 then left it 152 latents of 1/16 where one network had 5,794 of 1/4 (notes.md,
    session 12)."""
    if cfg.num_experts == 1 and cfg.hidden in _NETWORK_BYTES:
        return _NETWORK_BYTES[cfg.hidden]
    return network_bytes(cfg) + side_bytes(cfg)


def _counts(shape: tuple[int, ...], first: int) -> list[int]:
    return [math.prod(g) for g in level_shapes(shape, _levels_from(shape, first), first)]


def network_bytes(cfg: GridConfig) -> int:
    """Predicted coded bytes of the network at nominal int8 (~7 bits a weight, measured)."""
    return math.ceil(sum(math.prod(s) for _, s in mlp_layout(cfg)) * 7 / 8)
