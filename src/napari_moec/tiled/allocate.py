"""Rate allocation: how the store's byte budget is shared between tiles.

Every byte of the store counts (the ratio is a promise for the whole store): the metadata, the
constant tiles (a kind byte, the index, the value and a CRC), each network tile's own header and
CRC, and in a ``.ozx`` the ZIP records of every entry are set aside first; what is left is shared
by the network tiles' payloads.

``"uniform"`` is the naive baseline: every tile gets the same share, and a constant or empty
tile leaves most of its share unused. ``"equal"`` gives the network tiles all the bytes, in
proportion to their voxels. ``"difficulty"`` (the default) tilts that split toward the tiles the
scan measured as harder: ``b_i ∝ voxels_i · d_i^p`` with ``d_i`` the scan's probe (:mod:`.scan`).
That is the optimum of a power-law model ``error_i ∝ d_i · b_i^-γ`` with ``p = 1/(1+γ)``; ``p``
is the store family's (``TilePolicy.difficulty_exponent``), set by measurement. SIREN 0.3: on
the macaque at 1024x (64³ tiles, 1500 steps per tile) equal split gave 35.68 dB, ``p`` = 0.8
36.17 dB and ``p`` = 0.3 36.56 dB at the same bytes (docs/benchmarks/tiled.md). Grid 0.6: its
single files' error falls as bytes^-0.4 to bytes^-0.7 (the 5-minute files at 256x and 1024x),
so ``p`` 0.6-0.7; on the whole macaque at 256x (four tiles, 140 s a tile) ``p`` = 0.3 stored
45.62 dB, 0.6 45.88 dB and 1.0 45.79 dB (docs/tiled.md). Every network
tile gets at least the smallest network and at most ``MAX_SHARE`` times the mean share (a network
wider than its training schedule can fit wastes its bytes). Each tile's network is what its
share buys in the store's model family (:mod:`.tilemodels`: the family's own sizing through the
contract; for SIREN the widest network,
:func:`~napari_moec.families.siren.sizing.tile_network`, with experts left to "auto" two
experts, or one network where two would be narrower than ``MIN_EXPERT_WIDTH``). SIREN
tiles do not follow the single-volume rule that stores one network where it would be 20-80
wide: that band was measured on whole volumes only, and following it would
change what every existing tiled setting stores. Tiles whose every voxel is one value
are stored as that value; the commonest such value becomes the array's fill value, and its tiles
are not written at all.

Training time follows the voxels. A network tile trains for ``schedule`` times the job's
steps (and time limit), ``schedule`` its region's voxels (tile plus margin: what a step's
latents and samples cover) over the mean of the network tiles', so the store's training is
the job's schedule times its network tiles, spread as one network over the whole volume
spreads its steps. Tiles of equal size (``tiling.balanced_edge``) differ only by the margin
the volume's faces cut: a 512³ volume in 128³ tiles trains its interior tiles 3,499 steps
and its corners 2,551 for a mean of 3,000. On the macaque's four uneven tiles the largest
trained 6,799 steps in its 140 s and the smallest 8,793, with 1.6x fewer voxels. Measured,
the store's PSNR moved within its run-to-run noise on the macaque, and on the 512³ volume
the interior tiles gained 0.9 dB (docs/tiled.md).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

from .. import families
from ..errors import ConfigError
from .scan import TileStats
from .tileformat import TileSpec, encode_constant_tile, max_network_overhead
from .tilemodels import smallest_payload, tile_model_config

__all__ = [
    "MAX_SHARE",
    "Allocation",
    "TilePlan",
    "allocate",
    "choose_fill",
    "schedule_shares",
]

#: Allocation modes (see the module docstring).
MODES = ("difficulty", "equal", "uniform")
#: The widest share of the budget one tile may get, in units of the mean share.
MAX_SHARE = 8.0


@dataclass(frozen=True)
class TilePlan:
    """What one tile will be: "empty" (not written), "constant" or "network" (with its size:
    ``config`` is its model config in the store's family; ``hidden`` and ``experts`` are its
    width and expert count, for reports; ``schedule`` its training steps and time limit as a
    multiple of the job's, module docstring)."""

    index: tuple[int, ...]
    kind: str
    value: float | int | None = None
    payload_budget: int = 0
    hidden: int = 0
    experts: int = 0
    reserved: int = 0
    config: Any = None
    schedule: float = 1.0


@dataclass(frozen=True)
class Allocation:
    tiles: tuple[TilePlan, ...]
    fill_value: float | int
    payload_bytes: int
    fixed_bytes: int

    def count(self, kind: str) -> int:
        return sum(t.kind == kind for t in self.tiles)


def choose_fill(stats: list[TileStats], dtype: str) -> float | int:
    """The array's fill value: the commonest value of the constant tiles (0 when none), so the
    most frequent constant tiles (background) need no chunk at all."""
    constants = Counter(s.vmin for s in stats if s.constant)
    # ties go to the value nearest 0 (background, and zarr's usual fill value)
    fill = max(constants, key=lambda v: (constants[v], -abs(v))) if constants else 0
    return float(fill) if dtype == "float32" else int(fill)


def allocate(
    spec: TileSpec,
    stats: list[TileStats],
    budget: int,
    *,
    mode: str = "difficulty",
    experts: int | None = None,
    container_overhead=lambda index: 0,
    exponent: float | None = None,
    fill: float | int | None = None,
    options: Any = None,
    quality_target: bool = False,
) -> Allocation:
    """Share ``budget`` bytes (all chunk bytes; metadata already set aside) between the tiles.

    ``experts`` is the user's expert count for SIREN tiles (None: the tiles' rule);
    ``options`` the options a family other than SIREN sizes each tile with (None: its own
    defaults; an ``ArchConfig`` carries experts and top-k over); ``quality_target``: a PSNR
    target sizes the tiles, their shares are ceilings (``SizeRequest.quality_target``);
    ``exponent``: ``p`` of the "difficulty" split (None: the store family's measured value).

    Raises ConfigError when the budget cannot hold the smallest network for every tile that
    needs one (the message says which tile size or ratio would fit).
    """
    if mode not in MODES:
        raise ConfigError(f"allocation must be one of {MODES}, got {mode!r}")
    fill = choose_fill(stats, spec.values.dtype) if fill is None else fill
    if exponent is None:
        exponent = families.get(spec.networks.family).tile_policy.difficulty_exponent
    plans: dict[tuple, TilePlan] = {}
    fixed = 0
    network = [s for s in stats if not s.constant]
    for s in stats:
        if s.constant and s.vmin == fill:
            plans[s.index] = TilePlan(s.index, "empty", value=fill)
        elif s.constant:
            value = int(s.vmin) if spec.values.dtype != "float32" else s.vmin
            cost = len(encode_constant_tile(spec, s.index, value)) + container_overhead(s.index)
            plans[s.index] = TilePlan(s.index, "constant", value=value, reserved=cost)
            fixed += cost
    reserve = {
        s.index: max_network_overhead(spec, s.index) + container_overhead(s.index) for s in network
    }
    fixed += sum(reserve.values())
    available = budget - fixed
    by_shape = {spec.region_shape(s.index): s.index for s in network}
    smallest = max(
        (smallest_payload(spec, i, options, quality_target) for i in by_shape.values()),
        default=1,
    )
    if network and available < smallest * len(network):
        raise ConfigError(
            f"the budget leaves {max(0, available)} bytes for {len(network)} tiles of "
            f"{'x'.join(map(str, spec.grid.tile))} voxels; the smallest tile network needs "
            f"{smallest}: use larger tiles or a lower ratio"
        )
    span2 = (spec.values.vmax - spec.values.vmin) ** 2
    weights = {}
    for s in network:
        if mode == "equal":
            weights[s.index] = float(s.voxels)
        else:
            difficulty = s.probe / span2 + 1e-9  # > 0: a smooth tile still needs its network
            weights[s.index] = s.voxels * difficulty**exponent
    if mode == "uniform":  # the naive baseline: every tile the same share, used or not
        share = math.floor(budget / len(stats)) - max(reserve.values(), default=0)
        if network and share < smallest:
            raise ConfigError(f"a uniform share of {share} bytes holds no tile network")
        shares = {s.index: share for s in network}
    else:
        cap = MAX_SHARE * available / max(1, len(network))
        shares = _water_fill(weights, available, smallest, cap)
    schedules = schedule_shares(spec, [s.index for s in network])
    for s in network:
        share = shares[s.index]
        config = tile_model_config(spec, s.index, share, experts, options, quality_target)
        if config is None:
            raise ConfigError(f"no network fits the {share} bytes of tile {s.index}")
        plans[s.index] = TilePlan(
            s.index, "network", payload_budget=share, hidden=config.hidden_features,
            experts=config.num_experts, reserved=reserve[s.index], config=config,
            schedule=schedules[s.index],
        )  # fmt: skip
    tiles = tuple(plans[s.index] for s in stats)
    return Allocation(tiles, fill, sum(shares.values()), fixed)


def schedule_shares(spec: TileSpec, network: list[tuple[int, ...]]) -> dict:
    """Each network tile's training schedule as a multiple of the job's: its region's voxels
    over the mean of ``network``'s (module docstring); the shares average 1."""
    voxels = {i: math.prod(spec.region_shape(i)) for i in network}
    mean = sum(voxels.values()) / max(1, len(voxels))
    return {i: v / mean for i, v in voxels.items()}


def _water_fill(weights: dict, total: int, lo: int, hi: float) -> dict:
    """Integer shares of ``total`` proportional to ``weights``, each within [lo, hi]."""
    free = dict(weights)
    fixed: dict = {}
    while free:
        left = total - sum(fixed.values())
        scale = left / sum(free.values()) if sum(free.values()) > 0 else 0.0
        shares = {k: w * scale for k, w in free.items()}
        low = {k for k, b in shares.items() if b < lo}
        high = {k for k, b in shares.items() if b > hi and hi >= lo}
        if not low and not high:
            return {**fixed, **{k: math.floor(b) for k, b in shares.items()}}
        for k in low:
            fixed[k] = lo
            del free[k]
        for k in high - low:
            fixed[k] = int(hi)
            del free[k]
    return fixed
