"""Choosing a grid model for a volume and a payload budget.

* Levels: from ``first_level`` down to the level whose largest axis has <= 3 nodes (at most
  12). ``first_level`` is the finest level (0: the voxel lattice) at which the latents get at least
  :func:`min_latent_bits` bits in all: ``MIN_BITS_PER_LATENT`` (0.5) each on average, finer
  grids at lower rates spending bytes on (cheap, not free) zeros and training slower; a grid
  of at most ``SMALL_GRID_LATENTS`` latents whose latents have ``SMALL_GRID_MIN_BITS`` bits
  in all needs only ``SMALL_GRID_BITS_PER_LATENT`` (0.35) each, ``LATTICE_BITS_PER_LATENT``
  (0.2) on the voxel lattice (below).
* Width from the payload: 16 from 4 kB, 8 from 1.2 kB, else 4 (the network is then ~5-25%
  of the payload).
* One expert unless asked (``num_experts``): the router's cost is measured in REPORT.md 6.
  A routed model's gate is ``ROUTED_GATE_HIDDEN`` wide, and the bytes its network takes
  (router and every expert) are priced before the levels are chosen; its experts have one
  layer where that buys the latents a finer level than two would (``ROUTED_SHALLOW_LAYERS``).

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

Small grids go one octave finer at fewer bits a latent. Measured in 5 minutes on 2 threads
(the time-to-quality budget; ``benchmarks/research/grid_equal_time.py V R --first-level F``,
one network, idle machine; notes.md, sessions 16 and 17), the finer level against the 0.5
rule's, PSNR in dB:

====================  ==========  ====================  =============  =============
cell                  finer       latents, bits each    finer / rule   difference
====================  ==========  ====================  =============  =============
hipct 64x             lattice     303,875, 0.204        33.74 / 33.33  +0.41
ct_head 64x           lattice     440,323, 0.208        35.62 / 35.10  +0.52
mri4d 64x             lattice     112,479, 0.212        32.69 / 32.67  +0.02
macaque 3000x         1/4         87,175, 0.497         39.76 / 38.48  +1.28
ct_head 256x          1/2         59,395, 0.375         30.72 / 30.44  +0.28
mri4d 256x            1/2         11,004, 0.496         29.05 / 28.96  +0.09
macaque 1024x         1/2         661,775, 0.204        42.84 / 42.75  +0.09
hipct 256x            1/2         41,731, 0.356         31.60 / 31.67  -0.07
macaque 6000x         1/4         87,175, 0.250         37.49 / 37.99  -0.50
mri4d 1024x           1/4         1,722, 0.408          24.34 / 25.19  -0.85
macaque 64x           lattice     5,091,599, 0.434      46.02 / 47.99  -1.97
====================  ==========  ====================  =============  =============

Off the lattice a finer level paid from ~0.35 bits a latent (the macaque at 3000x by 1.3 dB)
and lost at 0.25 (the macaque at 6000x); on the lattice, where a latent is a voxel's own
value and no interpolation smooths it, from 0.2 (the 64³ volumes at 64x; at 16x, ~1 bit a
latent, +3 to +6 dB, above). Two limits, each from a measured loss: the grid must be cheap to
step (the macaque's lattice, 5.1 M latents, ran 2,345 steps to 1/2's 13,499 in the 5
minutes: a step's rate term and interpolation cover every latent), so at most
``SMALL_GRID_LATENTS`` (the largest measured to gain: 0.66 M); and the budget not among the
smallest (mri4d at 1024x, a 138-byte payload, ~700 latent bits), so at least
``SMALL_GRID_MIN_BITS`` (the smallest measured to gain: 5,456, mri4d 256x). The thresholds
lie between measured cells of four volumes; the next volume may draw them elsewhere.
"""

from __future__ import annotations

import math

from .config import MAX_LATENTS, GridConfig, level_shapes
from .payload import side_bytes
from .train import CPU_MAX_VOXELS

__all__ = [
    "AUTO_MAX_STEPS",
    "AUTO_MIN_STEPS",
    "AUTO_PASSES",
    "AUTO_STEP_LATENTS",
    "AUTO_WORK_STEPS",
    "CBC_LATENT_SAVING",
    "LATTICE_BITS_PER_LATENT",
    "MIN_BITS_PER_LATENT",
    "ROUTED_GATE_HIDDEN",
    "ROUTED_SHALLOW_LAYERS",
    "SMALL_GRID_BITS_PER_LATENT",
    "SMALL_GRID_LATENTS",
    "SMALL_GRID_MIN_BITS",
    "auto_config",
    "auto_steps",
    "min_latent_bits",
    "network_bytes",
    "predicted_payload_bytes",
]

#: The bits a latent gets at least, on average, at the finest level chosen (module docstring).
MIN_BITS_PER_LATENT = 0.5
#: The floors for grids of at most ``SMALL_GRID_LATENTS`` latents (cheap enough to step that
#: a finer level pays at fewer bits a latent) whose latents have at least
#: ``SMALL_GRID_MIN_BITS`` bits in all; the voxel lattice's own (module docstring, measured
#: in 5 minutes).
SMALL_GRID_BITS_PER_LATENT = 0.35
LATTICE_BITS_PER_LATENT = 0.2
SMALL_GRID_LATENTS = 1 << 20
SMALL_GRID_MIN_BITS = 4096
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
#: The layers of a routed model's experts where one layer buys its latents a finer level
#: than two would (else two, as one network's). The experts are most of a routed network's
#: bytes, and at 16 wide their second layer (16 x 16 an expert) is what kept the latents one
#: level coarser than one network's at 64x. Measured in 5 minutes on 2 threads, 4 experts
#: top-2 (``benchmarks/research/grid_equal_time.py V R --experts 4 --config
#: expert_layers=1|2``; notes.md, session 28), one layer against two, PSNR in dB: where it
#: moves the latents finer, hipct 64x 33.68 (the lattice) against 33.33 (1/2; session 25),
#: ct_head 64x 35.81 / 35.76 (the same), mri4d 256x 28.87 (1/2) / 28.67 (1/4); where the levels
#: stay, it only gives capacity away: the macaque at 256x 45.14 / 45.69, ct_head 256x 30.33
#: (two layers 30.34, session 18), hipct 256x 31.57 (31.58, session 25).
#: (A hipct 64x file's own header leaves its payload 28 bytes short of the lattice: there it
#: keeps two layers from 1/2.)
ROUTED_SHALLOW_LAYERS = 1
_NETWORK_BYTES = {16: 400, 8: 130, 4: 50}  # measured network + side bytes, nominal int8


#: "auto" steps (:func:`auto_steps`): at least ``AUTO_MIN_STEPS``, else ``AUTO_PASSES`` passes
#: of ``CPU_MAX_VOXELS``-voxel steps over the volume, at most ``AUTO_MAX_STEPS``, and at most
#: ``AUTO_WORK_STEPS / (1 + latents / AUTO_STEP_LATENTS)``: a step's cost grows with the
#: latents its rate term covers.
AUTO_MIN_STEPS = 20_000
AUTO_PASSES = 150
AUTO_MAX_STEPS = 40_000
AUTO_WORK_STEPS = 80_000
AUTO_STEP_LATENTS = 300_000


def auto_steps(cfg: GridConfig) -> int:
    """The steps a file of ``cfg`` trains where the user leaves them to "auto".

    Measured one network a volume, one thread, seed 0, steps scheduled (not seconds;
    ``benchmarks/grid_fill.py V R --steps S``, docs/benchmarks.md, session 23), PSNR in dB:

    ==============  ===========  =====  =====  =====  =====  =====
    cell            voxels       2k     6k     12k    18k    24k
    ==============  ===========  =====  =====  =====  =====  =====
    hipct 64x       262,144      33.37  33.75         33.77
    ct_head 64x     380,928      34.28  35.43         35.54
    ct_head 256x    380,928      29.25  30.25  30.63  30.67
    ct_head 1024x   380,928             26.80         26.97
    mri4d 256x      101,475      28.46  28.60         28.79
    macaque 256x    4,429,824    42.77  45.03  46.35         46.58
    macaque 1024x   4,429,824    40.31  40.76  42.23
    ==============  ===========  =====  =====  =====  =====  =====

    The library's 2000 steps (the SIREN family's default, which this family had kept) left
    0.3-1.4 dB on the small volumes (up to 381 k voxels) and 3.8 dB on the macaque. Small
    volumes come near their plateau by ~18,000 steps whatever their size (a step sees every
    voxel of a 64³ volume in 8 steps); a large volume needs passes over its voxels too (the
    macaque gained 1.3 dB from 45 to 89 passes and 0.23 from 89 to 177). So: ``AUTO_MIN_STEPS``, or
    ``AUTO_PASSES`` passes of a CPU step's voxels where that is more (the macaque: 21,000),
    capped at ``AUTO_MAX_STEPS`` (a 256³ volume: 78 passes).

    And capped by the step's cost: a step costs about 7 ms plus 24 ns a latent on 2 threads
    of this 2-core EPYC (its rate term covers every latent; fitted to 5-minute runs: the
    macaque's voxel lattice at 16x, 5.1 M latents, 128 ms; its 1/2 levels, 0.66 M, 22-24;
    hipct 64x, 0.30 M, 14-16; ct_head 256x, 59 k, 9), so ``AUTO_WORK_STEPS`` steps of a
    model whose latents cost nothing, ``1 + latents / AUTO_STEP_LATENTS`` times fewer as they
    grow, bound every default run of one network to about 80,000 x 7 ms, ~9 minutes there,
    where the passes alone gave the macaque at 16x 21,000 steps of 128 ms (45 minutes; now
    4,000) and a 384³ volume at 16x 40,000 steps of ~200 ms (by that fit). The cap binds on no other
    shared cell. A time limit ends any run sooner. Counted in a CPU step's voxels on every
    device: the same options train the same file anywhere (an accelerator's larger steps
    then pass over the volume more often, at about the same cost a step).
    """
    passes = AUTO_PASSES * math.prod(cfg.shape) / CPU_MAX_VOXELS
    steps = min(max(AUTO_MIN_STEPS, 1000 * math.ceil(passes / 1000)), AUTO_MAX_STEPS)
    work = AUTO_WORK_STEPS / (1 + cfg.latent_count / AUTO_STEP_LATENTS)
    return min(steps, max(1000, 1000 * math.floor(work / 1000)))


def min_latent_bits(latent_count: int, first_level: int) -> float:
    """The fewest bits the latents of a grid of ``latent_count`` latents whose finest level is
    ``first_level`` may have in all for those levels to be chosen (module docstring)."""
    floor = MIN_BITS_PER_LATENT * latent_count
    if latent_count <= SMALL_GRID_LATENTS:
        each = LATTICE_BITS_PER_LATENT if first_level == 0 else SMALL_GRID_BITS_PER_LATENT
        floor = min(floor, max(each * latent_count, SMALL_GRID_MIN_BITS))
    return floor


#: The share of the latent bits the coarse context (``"cbc"``) saves at least, by the smallest
#: of six measured cells (``benchmarks/research/coarse_context.py``, session 24: mri4d 64x
#: 1.1 %, the others 2.6-25 %): it pays for its 4 more model bytes a level, which alone moved
#: hipct 256x, 12 bytes from the edge of its budget, from levels of 1/2 to 1/4.
CBC_LATENT_SAVING = 0.01


def predicted_payload_bytes(cfg: GridConfig) -> int:
    """The payload the sizing assumes for ``cfg`` (the family's ``predict_payload_nbytes``):
    side bytes, the network at nominal int8 and the fewest latent bits its levels were
    chosen with (:func:`min_latent_bits`; ``CBC_LATENT_SAVING`` fewer under the coarse
    context)."""
    bits = min_latent_bits(cfg.latent_count, cfg.first_level)
    if cfg.context == "cbc":
        bits *= 1 - CBC_LATENT_SAVING
    latent = math.ceil(bits / 8)
    return side_bytes(cfg) + network_bytes(cfg) + latent


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
    if routed and "expert_layers" not in overrides:  # ROUTED_SHALLOW_LAYERS
        deep, shallow = (
            auto_config(
                shape, payload_bytes, finest_level=finest_level, expert_layers=n, **overrides
            )
            for n in (GridConfig.expert_layers, ROUTED_SHALLOW_LAYERS)
        )
        return shallow if shallow.first_level < deep.first_level else deep

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
            if count <= MAX_LATENTS:  # (a config of more cannot be built)
                candidate = config(first)
                latent_bits = 8 * max(32, payload_bytes - _network_estimate(candidate))
                if latent_bits >= MIN_BITS_PER_LATENT * count:
                    break
                # A lower floor chooses a level at the edge of the budget: the payload the
                # family predicts (the network at nominal int8, where this search prices one
                # network by the measured table) must fit too, or the family's check sends
                # the config down the lean ladder.
                fits = predicted_payload_bytes(candidate) <= payload_bytes
                if fits and latent_bits >= min_latent_bits(count, first):
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
    return math.ceil(cfg.network_weight_count * 7 / 8)
