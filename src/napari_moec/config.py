"""Frozen settings, each declared once: the architecture the user asks for, the training
schedule, the stored precision, and the concrete network a file holds.

Every user-facing field is declared with :func:`~napari_moec.options.option`: its default, range
and help text live in the field's metadata, and that one declaration validates the value, builds
the CLI's flags (``cli.py``) and the napari widget's controls (``_widget_settings.py``).
Defaults follow the MoEC paper (§4.1) where it states them and our measurements where it does
not (``docs/benchmarks.md``).
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ConfigError
from .options import check_options as _check_options
from .options import option, option_fields

__all__ = [
    "OPTION_CONFIGS",
    "PRECISIONS",
    "ArchConfig",
    "BoundConfig",
    "ModelConfig",
    "PreviewConfig",
    "QuantConfig",
    "RunConfig",
    "TrainConfig",
    "option",
    "option_fields",
]

#: Stored precisions: float formats are written raw; ``intN`` are symmetric uniform
#: quantizers with N-bit nominal levels whose integers are entropy coded.
PRECISIONS = ("fp32", "fp16", "int8", "int6", "int4")
#: What "auto" steps are (``TrainConfig.steps`` None; resolved by the model family, its
#: ``auto_steps``: grid ``families/grid/sizing.auto_steps``, SIREN ``schedule.DEFAULT_STEPS``;
#: a store's by ``tiled.task.STORE_AUTO_STEPS``).
AUTO_STEPS_HELP = (
    "grid: 20,000, or 150 passes over a large volume's voxels (at most 40,000), fewer where "
    "the latent grids make a step costly; siren: 2000; a tiled store: 2000 times each tile's "
    "share of the voxels"
)


@dataclass(frozen=True)
class ArchConfig:
    """The architecture a user asks for; None fields are chosen from the byte budget.

    See :func:`napari_moec.plan.plan` for how the budget turns this into a :class:`ModelConfig`.
    """

    model: str = option(
        "grid",
        "model family: 'siren' (the paper's MoE of SIREN experts) or 'grid' (entropy-coded "
        "latent grids under routed ReLU-MLP experts: better files in less time)",
        choices=("siren", "grid"),
        ui="basic",
        label="Model",
        cli="--model",
    )
    num_experts: int | None = option(
        None,
        "number of experts, each learning its own region of the volume",
        lo=1,
        hi=64,
        ui="basic",
        label="Experts",
        cli="--experts",
        auto="grid: 1 (no router; it measured ahead of 4 experts at equal bytes and time). "
        "siren: 1 (no router) where one network would be 20 to 80 wide; else 2, or 1 where "
        "each of 2 would be narrower than 4 (tiles: 2, or 1 where each would be narrower "
        "than 4)",
    )
    top_k: int | None = option(
        None,
        "experts evaluated per voxel",
        lo=1,
        hi=2,
        ui="basic",
        label="Top-k",
        auto="grid: 2 where there are 2 or more experts (at equal bytes and time it measured "
        "ahead of top-1 in 8 of 9 shared cases, by 0.09 to 2.3 dB); siren: 1 (its top-2 "
        "measured worse)",
    )
    expert_layers: int = option(
        3, "sine layers per expert (siren)", lo=1, hi=32, label="Expert layers", cli="--layers"
    )
    hidden_features: int | None = option(
        None,
        "width of the encoder and experts (siren); of each expert's hidden layers (grid)",
        lo=1,
        hi=4096,
        ui=None,
        auto="the widest network whose file fits the budget",
    )
    w0: float = option(
        30.0,
        "frequency factor of the hidden sine layers (siren)",
        lo=0,
        hi=1000,
        open_lo=True,
        ui=None,
    )
    w0_first: float | None = option(
        None,
        "frequency factor of the first sine layer (siren)",
        lo=0,
        hi=1000,
        open_lo=True,
        ui=None,
        auto="0.75 x width within [5, 30]",
    )

    def __post_init__(self) -> None:
        _check_options(self)
        experts, top_k = self.num_experts, self.top_k
        if experts is not None and top_k is not None and top_k > experts:
            raise ConfigError(
                f"top_k ({self.top_k}) cannot exceed num_experts ({self.num_experts})"
            )


@dataclass(frozen=True)
class TrainConfig:
    """Training schedule (paper §3.5, §4.1).

    The schedule runs until ``steps`` (None: "auto", the model family's choice for the model it
    sized, ``AUTO_STEPS_HELP``) or ``time_limit`` seconds, whichever ends first; the
    learning rate follows ``schedule`` from ``lr`` to ``lr * lr_final`` over it
    (:mod:`napari_moec.schedule`: "auto" picks warm-up + cosine for networks of width >= 21
    trained >= 1000 steps, exponential decay otherwise), the router freezes at
    ``freeze_router_at`` of it and the last ``qat_fraction`` of it trains with the stored
    quantization in the loop (quantization-aware training, off by default).
    """

    steps: int | None = option(
        None,
        "optimiser steps",
        lo=1,
        hi=10**9,
        ui="basic",
        label="Steps",
        ui_step=100,
        auto=AUTO_STEPS_HELP,
    )
    time_limit: float | None = option(
        None, "stop training after this many seconds", lo=0, open_lo=True, ui=None
    )
    batch_size: int = option(
        16384,
        "coordinates per optimiser step",
        lo=1,
        hi=1 << 26,
        label="Batch size",
        ui_max=1 << 22,
        ui_step=1024,
    )
    schedule: str = option(
        "auto",
        "learning-rate schedule: warm-up then cosine decay, or exponential decay",
        choices=("auto", "cosine", "exponential"),
        label="LR schedule",
    )
    lr: float | None = option(
        None,
        "peak learning rate of Adam",
        lo=0,
        hi=1,
        open_lo=True,
        open_hi=True,
        label="Learning rate",
        ui_step=1e-4,
        auto="5e-3 with the cosine schedule, 2e-3 with the exponential one",
    )
    lr_final: float | None = option(
        None,
        "final learning rate as a fraction of lr",
        lo=0,
        hi=1,
        open_lo=True,
        ui=None,
        auto="0.01 with the cosine schedule, 0.05 with the exponential one",
    )
    warmup: float = option(
        0.02,
        "fraction of the schedule over which the lr rises linearly from 0",
        lo=0,
        hi=0.5,
        ui=None,
    )
    guard: bool = option(
        True,
        "roll back to a recent snapshot and halve the lr when the training loss jumps "
        "(siren; the grid family's loss rises by design under its rate control, and its "
        "trainer keeps the best real file by checkpoints instead)",
        label="Loss guard",
    )
    balance_weight: float = option(
        0.01,
        "weight λ of the load-balancing loss (paper Eq. 3)",
        lo=0,
        label="Balance λ",
        ui_max=10.0,
        ui_step=0.005,
    )
    capacity_factor: float = option(
        1.25,
        "expert capacity factor Cf (slots = Cf·k·B/n)",
        lo=0,
        open_lo=True,
        label="Capacity factor",
        ui_max=8.0,
        ui_step=0.05,
    )
    freeze_router_at: float = option(
        0.6,
        "fraction of the schedule after which the router is frozen",
        lo=0,
        hi=1,
        label="Freeze router at",
        cli="--freeze-at",
    )
    #: Off by default: measured on hipct 64x (1500 steps), QAT in the last 10% gave 30.83 dB
    #: against 31.31 dB for post-training quantization, because the rate controller then
    #: stores the weights on a finer grid than the nominal one QAT trained for.
    qat_fraction: float = option(
        0.0,
        "final fraction of the schedule trained with the stored quantization in the loop",
        lo=0,
        hi=1,
        open_hi=True,
        ui=None,
    )
    #: A quality target instead of a ratio (grid family): the ratio, if given, is then a
    #: ceiling on the file's bytes (default PSNR_CAP_RATIO). napari_moec.training: the rate
    #: term steers toward this PSNR, and the store keeps the smallest file that reaches it.
    target_psnr: float | None = option(
        None,
        "target PSNR in dB over the data range (grid model): the smallest file whose decoded "
        "PSNR is at least this; a ratio given too is then the least ratio allowed",
        lo=0,
        hi=200,
        open_lo=True,
        ui=None,
        cli="--psnr",
        auto="off: the ratio sets the size",
    )
    report_every: int = option(10, "steps between loss/PSNR measurements", lo=1, hi=10**6, ui=None)
    seed: int = option(
        0, "random seed (same seed, same file)", lo=0, hi=2**63 - 1, label="Seed", ui_max=2**31 - 1
    )

    def __post_init__(self) -> None:
        _check_options(self)


@dataclass(frozen=True)
class QuantConfig:
    """How the weights are stored.

    ``precision`` is one of :data:`PRECISIONS`. For ``intN`` the integers are entropy coded
    (``entropy=True``) with a per-tensor parametric model, and ``per_channel`` selects one scale
    per output row (paper A3's per-channel int8) instead of one per tensor.
    """

    precision: str = option(
        "int8", "stored precision of the weights", choices=PRECISIONS, label="Stored precision"
    )
    per_channel: bool = option(False, "one quantization scale per output channel", ui=None)
    entropy: bool = option(True, "entropy-code the quantized integers", ui=None)

    def __post_init__(self) -> None:
        _check_options(self)
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


@dataclass(frozen=True)
class RunConfig:
    """Where and how a compression runs; none of it changes the file's format.

    ``device``: "auto" (CUDA when present), "cpu" or "cuda". ``threads``: CPU threads for
    training, None for every core this process may use (on a machine busy with other jobs
    fewer can be much faster: docs/benchmarks.md). ``backend``: which code routes points to
    experts during training and decoding (:mod:`napari_moec.families.siren.tutel_backend`).
    """

    device: str = option(
        "auto",
        "where to train: auto (CUDA when present), cpu or cuda",
        choices=("auto", "cpu", "cuda"),
        ui="basic",
        label="Device",
    )
    threads: int | None = option(
        None,
        "CPU threads for training",
        lo=1,
        hi=4096,
        ui=None,
        auto="every core this process may use",
    )
    #: A training/decoding choice only: the file is the same whichever computes it.
    #: "tutel" needs Tutel installed (napari_moec.families.siren.tutel_backend); "auto" picks
    #: the faster one measured for the device and thread count (docs/benchmarks/backends.md).
    backend: str = option(
        "auto",
        "MoE routing backend: auto (measured faster for the device and threads), native, tutel",
        choices=("auto", "native", "tutel"),
        ui="advanced",
        label="MoE backend",
    )

    def __post_init__(self) -> None:
        _check_options(self)


@dataclass(frozen=True)
class BoundConfig:
    """A guaranteed maximum error: every decoded voxel within a bound of the original.

    Off by default (both None). With one of them set, the network is trained and stored at
    the asked ratio as usual, then a correction layer (:mod:`napari_moec.correction`) codes
    the residuals that exceed the bound; the file is the model plus that correction, so the
    *bound* is the promise and the ratio reached is reported, not promised.
    ``max_error`` is in the data's units; ``max_error_rel`` a fraction of the data range.
    """

    max_error: float | None = option(
        None,
        "guarantee every decoded voxel within this absolute error (data units); the file "
        "grows by a correction layer, the ratio is then what it reaches",
        lo=0,
        open_lo=True,
        label="Max error",
        ui_step=0.1,
    )
    max_error_rel: float | None = option(
        None,
        "guarantee every decoded voxel within this fraction of the data range",
        lo=0,
        hi=1,
        open_lo=True,
        label="Max error (rel.)",
        ui_step=0.001,
    )

    def __post_init__(self) -> None:
        _check_options(self)
        if self.max_error is not None and self.max_error_rel is not None:
            raise ConfigError("give max_error or max_error_rel, not both")

    @property
    def active(self) -> bool:
        """Whether a bound was asked for."""
        return self.max_error is not None or self.max_error_rel is not None

    def resolve(self, value_range: tuple[float, float]) -> float | None:
        """The absolute bound for data of ``value_range``, or None when none was asked."""
        if not self.active:
            return None
        from .correction import resolve_max_error  # correction imports decode, not config

        return resolve_max_error(self.max_error, self.max_error_rel, value_range)


#: The dataclasses of user options, by their :class:`~napari_moec.training.Compressor` keyword:
#: what the CLI's flags and the napari widget's controls are built from.
OPTION_CONFIGS = {
    "arch": ArchConfig,
    "train": TrainConfig,
    "quant": QuantConfig,
    "run": RunConfig,
    "bound": BoundConfig,
}


@dataclass(frozen=True)
class PreviewConfig:
    """When :class:`~napari_moec.training.Compressor` yields live previews, and their cost.

    A preview comes every ``every_steps`` optimiser steps and/or every ``every_seconds`` of
    training (whichever is due first; None disables that trigger), and always once when training
    ends, before the result. Scheduling by steps makes what a front end sees independent of the
    machine's speed; seconds keep the picture fresh on slow machines.

    Each preview decodes the whole volume on a strided grid of at most ``voxels`` voxels plus the
    regions a front end asked for (:meth:`~napari_moec.training.Compressor.request_regions`,
    e.g. the plane shown in napari) at full resolution, each clipped to ``region_voxels``: the
    cost of a preview is bounded by ``voxels + regions * region_voxels`` network evaluations.
    """

    every_steps: int | None = None
    every_seconds: float | None = None
    voxels: int = 1 << 16
    region_voxels: int = 1 << 20

    def __post_init__(self) -> None:
        if self.every_steps is not None and (
            isinstance(self.every_steps, bool)
            or not isinstance(self.every_steps, int)
            or self.every_steps < 1
        ):
            raise ConfigError(f"every_steps must be a positive integer, got {self.every_steps!r}")
        if self.every_seconds is not None and not self.every_seconds >= 0:
            raise ConfigError(f"every_seconds must be >= 0, got {self.every_seconds!r}")
        for name in ("voxels", "region_voxels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")

    @property
    def enabled(self) -> bool:
        return self.every_steps is not None or self.every_seconds is not None


@dataclass(frozen=True)
class ModelConfig:
    """The concrete architecture of a MoE SIREN (paper §3, Fig. 2): what a file stores.

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
        check_int("in_features", self.in_features, 1, 4)
        check_int("hidden_features", self.hidden_features, 1, 4096)
        check_int("num_experts", self.num_experts, 1, 64)
        check_int("top_k", self.top_k, 1, min(2, self.num_experts))
        check_int("expert_layers", self.expert_layers, 1, 32)
        check_int("gate_hidden", self.gate_hidden, 1, 4096)
        check_int("out_features", self.out_features, 1, 1)
        for name in ("w0", "w0_first"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not 0.0 < value <= 1000.0:
                raise ConfigError(f"{name} must be in (0, 1000], got {value!r}")


def check_int(name: str, value: object, lo: int, hi: int) -> None:
    """Raise ConfigError unless ``value`` is an int (not a bool) in ``[lo, hi]``."""
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ConfigError(f"{name} must be an integer in [{lo}, {hi}], got {value!r}")
