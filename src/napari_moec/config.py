"""Frozen settings: the network architecture, the training schedule and the stored precision.

Defaults follow the MoEC paper (§4.1) where the paper states them and our measurements where
it does not (see ``docs/benchmarks.md``); every field is validated here, at the API boundary.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ConfigError

__all__ = ["PRECISIONS", "ModelConfig", "QuantConfig", "TrainConfig"]

#: Stored precisions: float formats are written raw; ``intN`` are symmetric uniform
#: quantizers with N-bit nominal levels whose integers are entropy coded.
PRECISIONS = ("fp32", "fp16", "int8", "int6", "int4")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a MoE SIREN (paper §3, Fig. 2).

    Parameters
    ----------
    in_features
        Coordinate dimensions: 3 for ZYX, 4 for TZYX/CZYX.
    hidden_features
        Width of the encoder, every expert layer and the decoder input.
    num_experts
        Number of SIREN experts ``n``.
    top_k
        Experts per coordinate (1 or 2).
    expert_layers
        Sine layers per expert (hidden -> hidden).
    gate_hidden
        Width of the router's two ReLU layers.
    out_features
        Intensities per coordinate (1).
    w0, w0_first
        SIREN frequency factors of hidden and first layers (Sitzmann et al. 2020, §3.2).
    """

    in_features: int = 3
    hidden_features: int = 32
    num_experts: int = 2
    top_k: int = 1
    expert_layers: int = 3
    gate_hidden: int = 16
    out_features: int = 1
    w0: float = 30.0
    w0_first: float = 30.0

    def __post_init__(self) -> None:
        _check_int("in_features", self.in_features, 1, 4)
        _check_int("hidden_features", self.hidden_features, 1, 4096)
        _check_int("num_experts", self.num_experts, 1, 64)
        _check_int("top_k", self.top_k, 1, min(2, self.num_experts))
        _check_int("expert_layers", self.expert_layers, 1, 32)
        _check_int("gate_hidden", self.gate_hidden, 1, 4096)
        _check_int("out_features", self.out_features, 1, 1)
        for name in ("w0", "w0_first"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not 0.0 < value <= 1000.0:
                raise ConfigError(f"{name} must be in (0, 1000], got {value!r}")


@dataclass(frozen=True)
class TrainConfig:
    """Training schedule (paper §3.5, §4.1).

    The schedule runs until ``steps`` or ``time_limit`` seconds, whichever ends first; the
    learning rate decays exponentially from ``lr`` to ``lr * lr_final`` over that schedule, the
    router freezes at ``freeze_router_at`` of it and the last ``qat_fraction`` of it trains with
    the stored quantization in the loop (quantization-aware training, off by default).
    """

    steps: int = 2000
    time_limit: float | None = None
    batch_size: int = 16384
    lr: float = 2e-3
    lr_final: float = 0.05
    balance_weight: float = 0.01
    capacity_factor: float = 1.25
    freeze_router_at: float = 0.6
    #: Off by default: measured on hipct 64x (1500 steps), QAT in the last 10% gave 30.83 dB
    #: against 31.31 dB for post-training quantization, because the rate controller then
    #: stores the weights on a finer grid than the nominal one QAT trained for.
    qat_fraction: float = 0.0
    report_every: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        _check_int("steps", self.steps, 1, 10**9)
        _check_int("batch_size", self.batch_size, 1, 1 << 26)
        _check_int("report_every", self.report_every, 1, 10**6)
        _check_int("seed", self.seed, 0, 2**63 - 1)
        if self.time_limit is not None and not self.time_limit > 0:
            raise ConfigError(f"time_limit must be > 0 seconds, got {self.time_limit!r}")
        if not 0 < self.lr < 1:
            raise ConfigError(f"lr must be in (0, 1), got {self.lr!r}")
        if not 0 < self.lr_final <= 1:
            raise ConfigError(f"lr_final must be in (0, 1], got {self.lr_final!r}")
        if not self.balance_weight >= 0:
            raise ConfigError(f"balance_weight must be >= 0, got {self.balance_weight!r}")
        if not self.capacity_factor > 0:
            raise ConfigError(f"capacity_factor must be > 0, got {self.capacity_factor!r}")
        if not 0 <= self.freeze_router_at <= 1:
            raise ConfigError(f"freeze_router_at must be in [0, 1], got {self.freeze_router_at!r}")
        if not 0 <= self.qat_fraction < 1:
            raise ConfigError(f"qat_fraction must be in [0, 1), got {self.qat_fraction!r}")


@dataclass(frozen=True)
class QuantConfig:
    """How the weights are stored.

    ``precision`` is one of :data:`PRECISIONS`. For ``intN`` the integers are entropy coded
    (``entropy=True``) with a per-tensor parametric model, and ``per_channel`` selects one scale
    per output row (paper A3's per-channel int8) instead of one per tensor.
    """

    precision: str = "int8"
    per_channel: bool = False
    entropy: bool = True

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.is_float and (self.per_channel or not self.entropy):
            # Float formats are stored raw: per_channel/entropy are meaningless there.
            object.__setattr__(self, "per_channel", False)
            object.__setattr__(self, "entropy", True)

    @property
    def is_float(self) -> bool:
        return self.precision.startswith("fp")

    @property
    def bits(self) -> int:
        return int(self.precision[2:] if self.is_float else self.precision[3:])


def _check_int(name: str, value: object, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ConfigError(f"{name} must be an integer in [{lo}, {hi}], got {value!r}")
