"""The grid family's architecture: a frozen dataclass, its checks and its 9 stored bytes.

Torch-free, so :mod:`.payload` (and a reader that only parses) needs numpy alone.

Level ``l`` of the latent grids has ``ceil((N - 1) / 2^l) + 1`` nodes along an axis of ``N``
voxels (at least 2, at most N): every axis is downsampled, the time axis of a 4D volume too
(the prototype measured +0.5-0.9 dB on the 3-frame 4D EPI over keeping T at full resolution,
benchmarks/research/grid_experts/REPORT.md section 9). Levels run from ``first_level`` (0 would
be the voxel lattice itself) for ``num_levels`` levels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ...errors import ConfigError

__all__ = [
    "FIELDS",
    "KERNELS",
    "MAX_LATENTS",
    "GridConfig",
    "level_shapes",
    "mlp_layout",
]

KERNELS = ("linear", "cubic")
CONTEXTS = ("none", "cb", "lin", "cbc")
#: Stored latents at most: 64 MiB of int32 while decoding. A 256^3 volume with levels from 1/2
#: has 2.4 M; ``sizing.auto_config`` raises ``first_level`` to stay below it.
MAX_LATENTS = 1 << 24
#: (field, lowest, highest) of the stored configuration bytes, in file order.
FIELDS = (
    ("num_levels", 1, 12),
    ("first_level", 0, 24),
    ("kernel", 0, len(KERNELS) - 1),
    ("hidden", 1, 128),
    ("num_experts", 1, 16),
    ("top_k", 1, 16),
    ("expert_layers", 1, 4),
    ("gate_hidden", 1, 64),
    ("context", 0, len(CONTEXTS) - 1),
)


@dataclass(frozen=True)
class GridConfig:
    """Latent grids + router + ReLU-MLP experts for one volume of ``shape``.

    Parameters
    ----------
    shape : tuple of int
        Volume shape, 3D (ZYX) or 4D (TZYX/CZYX).
    num_levels, first_level : int
        Latent levels ``first_level .. first_level + num_levels - 1`` (see module docstring).
    kernel : {"linear", "cubic"}
        Interpolation of the grids: trilinear, or the uniform cubic B-spline (4 taps, C2;
        +0.5 dB over linear at hipct 64x in the prototype).
    hidden, expert_layers : int
        Width and number of ReLU layers of each expert (``num_levels -> hidden -> ... ``).
    num_experts, top_k : int
        Experts and how many each voxel uses; 1 expert means no router.
    gate_hidden : int
        Hidden width of the router ``[coords, features] -> gate_hidden -> num_experts``. It
        reads the coordinates because every latent is 0 at initialisation, so a router that
        reads only the features sees identical voxels and collapses to one expert (REPORT.md 6).
    context : {"none", "cb", "lin", "cbc"}
        Latent entropy model: factorized per level, checkerboard contexts (:mod:`.context`),
        the learned context model over the same ordering (:mod:`.learned`), or checkerboard
        contexts with the even latents conditioned on the next coarser level (``"cbc"``,
        :mod:`.context`).
    """

    shape: tuple[int, ...]
    num_levels: int = 6
    first_level: int = 1
    kernel: str = "cubic"
    hidden: int = 16
    num_experts: int = 1
    top_k: int = 1
    expert_layers: int = 2
    gate_hidden: int = 8
    context: str = "cb"

    def __post_init__(self) -> None:
        shape = tuple(int(n) for n in self.shape)
        object.__setattr__(self, "shape", shape)
        if len(shape) not in (3, 4) or min(shape) < 1:
            raise ConfigError(f"grid family needs a 3D or 4D shape of sizes >= 1, got {shape}")
        if self.kernel not in KERNELS:
            raise ConfigError(f"unknown kernel {self.kernel!r}, use one of {KERNELS}")
        if self.context not in CONTEXTS:
            raise ConfigError(f"unknown context {self.context!r}, use one of {CONTEXTS}")
        for name, lo, hi in FIELDS:
            value = self._code(name)
            if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
                raise ConfigError(f"{name} must be an integer in [{lo}, {hi}], got {value!r}")
        if self.top_k > self.num_experts:
            raise ConfigError(f"top_k={self.top_k} > num_experts={self.num_experts}")
        if self.latent_count > MAX_LATENTS:
            raise ConfigError(f"{self.latent_count} latents > {MAX_LATENTS}: raise first_level")

    def _code(self, name: str) -> int:
        if name == "kernel":
            return KERNELS.index(self.kernel)
        if name == "context":
            return CONTEXTS.index(self.context)
        return getattr(self, name)

    @property
    def hidden_features(self) -> int:
        """The experts' width under the name reports, ``moec info`` and the widget use for
        every family's model."""
        return self.hidden

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def grid_shapes(self) -> list[tuple[int, ...]]:
        return level_shapes(self.shape, self.num_levels, self.first_level)

    @property
    def latent_count(self) -> int:
        return sum(math.prod(g) for g in self.grid_shapes)

    @property
    def network_weight_count(self) -> int:
        """Scalars of the stored network (router, experts, decoder: :func:`mlp_layout`)."""
        return sum(math.prod(s) for _, s in mlp_layout(self))

    def to_json(self) -> list[int]:
        """The header's ``"m"``: the fields of ``FIELDS`` as integers, in order."""
        return [self._code(name) for name, _, _ in FIELDS]

    @classmethod
    def from_json(cls, doc: object, shape: tuple[int, ...]) -> GridConfig:
        """Inverse of :meth:`to_json`; raises ConfigError for anything out of range (before
        a string table is indexed or anything is sized)."""
        if not isinstance(doc, list) or len(doc) != len(FIELDS):
            raise ConfigError(f"grid model must be a list of {len(FIELDS)} integers")
        values = dict(zip((f[0] for f in FIELDS), doc, strict=True))
        for name, lo, hi in FIELDS:
            v = values[name]
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise ConfigError(f"grid model {name}={v!r} is not an integer in [{lo}, {hi}]")
        values["kernel"] = KERNELS[values["kernel"]]
        values["context"] = CONTEXTS[values["context"]]
        return cls(shape=tuple(shape), **values)


def level_shapes(
    shape: tuple[int, ...], num_levels: int, first_level: int
) -> list[tuple[int, ...]]:
    """Grid shape of each level (module docstring): ``ceil((N-1)/2^l)+1`` nodes, in [2, N]."""
    return [
        tuple(min(n, max(2, math.ceil((n - 1) / 2**level) + 1)) for n in shape)
        for level in range(first_level, first_level + num_levels)
    ]


def mlp_layout(cfg: GridConfig) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """Names and shapes of the stored network tensors, in file order.

    ``n`` experts hold stacked weights ``(n, in, out)`` and biases ``(n, 1, out)``; the router
    (only when n > 1) is ``Linear(ndim + L, G) -> ReLU -> Linear(G, n)`` stored (out, in); the
    decoder ``Linear(hidden, 1)`` is shared and applied inside each expert's block.
    """
    n, h, lv = cfg.num_experts, cfg.hidden, cfg.num_levels
    layout: list[tuple[str, tuple[int, ...]]] = []
    if n > 1:
        g = cfg.gate_hidden
        layout += [
            ("gate.0.weight", (g, cfg.ndim + lv)),
            ("gate.0.bias", (g,)),
            ("gate.2.weight", (n, g)),
            ("gate.2.bias", (n,)),
        ]
    fan_in = lv
    for i in range(cfg.expert_layers):
        layout += [(f"experts.{i}.weight", (n, fan_in, h)), (f"experts.{i}.bias", (n, 1, h))]
        fan_in = h
    layout += [("decoder.weight", (1, h)), ("decoder.bias", (1,))]
    return tuple(layout)
