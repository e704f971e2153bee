"""The contract a model family fulfils: what the shared planner, training loop, rate control,
file format and decoder ask of a kind of network.

A *model family* is one kind of network a ``.moec`` file can hold: ``"siren"`` (a MoE of SIREN
experts, :mod:`napari_moec.families.siren`) is the first and the default; ``"grid"``
(entropy-coded latent grids + routed ReLU MLP experts) is the second. The shared code never
looks inside a family's network: it sizes, builds, trains, stores, reads and decodes through
the two objects below.

* :class:`PayloadCodec` is the family's **file side**, torch-network-free (numpy, the entropy
  coder and ``torch`` tensors as containers only; never an ``nn.Module``): it turns the
  family's *model config* into the header's ``"m"`` value and back, and checks and decodes a
  payload's bytes. :mod:`napari_moec.format` dispatches to it by the header's family field and
  must never import network code, so a family keeps its codec in a module of its own
  (``families/<name>/codec.py``) that imports nothing from its network modules.
* :class:`ModelFamily` is the family's **network side**: size a model for a byte budget, build
  it, train it (the behaviour :func:`napari_moec.training.train` drives), store it at a byte
  budget, rebuild it from a payload and decode a region with per-voxel expert labels.

Terms used below
----------------
model config
    A frozen, hashable dataclass of the family's own (``ModelConfig`` for SIREN): every number
    the decoder needs to rebuild the network, nothing it does not. It is what the header's
    ``"m"`` holds (through :meth:`PayloadCodec.config_to_json`) and what ``Header.model`` is.
options
    What the user asked for, the family's own (``ArchConfig`` for SIREN; ``None`` fields are
    chosen by :meth:`ModelFamily.size`). The options → configs translator of the front ends
    hands them over unchanged.
quant
    :class:`~napari_moec.config.QuantConfig`, stored as the header's ``"q"``. A family may
    ignore fields that mean nothing to it but must store files whose ``"q"`` is valid.
payload
    The bytes between the header and the CRC (``format.py``'s spec). The family owns their
    layout entirely; they must decode with only the header's ``"m"``/``"q"``/shape.
normalised volume
    The float32 volume mapped to the header's ``"n"`` range
    (:class:`~napari_moec.sampling.Normalization`): all training and decoding works in it.
coordinates
    float32 ``(N, ndim)`` in [-1, 1] per axis, axis order of the volume
    (:func:`~napari_moec.sampling.axis_coords`: voxel centres, ``-1`` .. ``1`` inclusive).

The file side (header)
----------------------
The header gains one optional key, ``"f"``: the family name. It is written **only for
non-SIREN families**, so SIREN files stay byte-for-byte what version 1.0 wrote and files without
``"f"`` are SIREN. A reader that does not know the family raises ``MoecFormatError``.
``Header.family`` carries it in memory (default ``"siren"``).

The shared loop and what it asks
--------------------------------
:func:`napari_moec.training.train` owns: the step count and time limit, stopping, the report
cadence (one host sync per ``report_every`` steps), the NaN check and
:class:`~napari_moec.schedule.LossGuard` (rollback acts on ``trainer.model`` /
``trainer.optimizer``), the best-so-far snapshot (EMA of the reported loss), the final
last-versus-best choice on a fixed set of voxels (:func:`~napari_moec.schedule.keep_better`,
which calls ``model.decode``), previews, and the progress events. The family's
:class:`FamilyTrainer` owns everything inside one optimiser step: what it samples (random
coordinates, boxes, or the whole volume), the loss (distortion plus a rate term, a balance
loss...), learning rates, phases (router freeze, quantization-aware training, noise → STE).

Rate control lives with the family (:meth:`ModelFamily.fit_payload`): SIREN quantizes its
weights with a bisected scale multiplier; the grid family codes its integer latents and
weights. Both must return a payload of at most the byte budget they are given.

Checklist for a new family ``<name>``
-------------------------------------
1. ``families/<name>/codec.py``: a :class:`PayloadCodec` instance named ``CODEC`` (no network
   imports).
2. ``families/<name>/__init__.py``: a :class:`ModelFamily` instance named ``FAMILY``.
3. Add ``"<name>"`` to :data:`napari_moec.families.FAMILIES`.
4. The built ``nn.Module`` fulfils :class:`DecodableModel`.
5. Tests: a round trip through ``format.pack``/``unpack``, a payload that never exceeds its
   budget, a corrupted payload raising ``MoecFormatError`` (never an allocation from an
   unchecked size), decode of an ROI equal to the same voxels of the full decode.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, runtime_checkable

if TYPE_CHECKING:  # the contract imports no torch at run time: format.py reads it
    import numpy as np
    import torch

    from ..config import QuantConfig, TrainConfig
    from ..format import Header

__all__ = [
    "DecodableModel",
    "FamilyTrainer",
    "Fit",
    "ModelFamily",
    "PayloadCodec",
    "SizeRequest",
    "StepStats",
    "TilePolicy",
    "TrainingTarget",
]


@dataclass(frozen=True)
class TilePolicy:
    """How a store tiles a volume for a family when tile and margin are "auto"
    (:mod:`napari_moec.tiled.tiling`; each family's values are measured, docs/tiled.md).

    ``edges``: the spatial tile edges to choose from (multiples of 16, so that strides 2^k stay
    aligned); "auto" takes the smallest whose byte share at the ratio reaches
    ``target_bytes`` (the largest when none does). ``margin_fraction``: context voxels
    beyond each face, a fraction of the edge, at least ``min_margin``.
    ``difficulty_exponent``: ``p`` of the "difficulty" byte split between tiles
    (:mod:`napari_moec.tiled.allocate`: bytes ∝ voxels · difficulty^p, ``p = 1/(1+γ)`` for a
    family whose error falls as bytes^-γ)."""

    edges: tuple[int, ...]
    target_bytes: int
    margin_fraction: float
    min_margin: int
    difficulty_exponent: float


class Fit(NamedTuple):
    """A stored payload and the knobs that made it (reported, never needed to decode):
    ``multiplier`` a family's main rate knob (SIREN: the quantization-scale multiplier, 1.0 for
    float precisions), ``extra_bits`` bits added per tensor group (SIREN: ``{"encoder": 2}``)."""

    payload: bytes
    multiplier: float
    extra_bits: dict[str, int]


@runtime_checkable
class PayloadCodec(Protocol):
    """A family's file side: the header's ``"m"`` and the payload's bytes. No network code.

    Every method that reads file content raises :class:`~napari_moec.errors.MoecFormatError`
    on bad input, and checks every number before it sizes an allocation.
    """

    #: The family name, as in the registry and the header's ``"f"``.
    family: str

    def config_to_json(self, config: Any) -> list | dict:
        """The header's ``"m"`` value for ``config``: compact JSON (ints where exact)."""
        ...

    def config_from_json(self, doc: object, shape: tuple[int, ...]) -> Any:
        """The model config a header's ``"m"`` holds, checked (``shape``: the volume's, to
        check what depends on it, e.g. the input dimensions)."""
        ...

    def count_parameters(self, config: Any) -> int:
        """Stored numbers of a model (weights, latents): the size estimate's basis and the
        bound the reader checks before allocating (``format.MAX_PARAMETERS``)."""
        ...

    def describe(self, config: Any) -> tuple[dict, str]:
        """What ``moec info`` says of a model: its numbers by name (``--json``) and one line
        of text."""
        ...

    def unpack_payload(
        self, config: Any, quant: QuantConfig, payload: bytes, *, decode_weights: bool = True
    ) -> dict[str, np.ndarray] | None:
        """Check ``payload`` against ``config``/``quant`` and return its float32 arrays by
        name (whatever :meth:`ModelFamily.model_from_weights` takes). With
        ``decode_weights=False`` only check the length and cheap invariants and return None
        (``moec info``)."""
        ...


@dataclass(frozen=True)
class SizeRequest:
    """What sizing knows before any voxel is read.

    ``header`` is the file's header with ``model=None`` (shape, dtype, value range or its
    placeholder, quant, axes, spacing, ``family``); ``budget`` the whole file's bytes
    (``floor(original / ratio)``, header and CRC included); ``options`` the family's options.
    A family returns the largest model whose predicted file fits::

        sized = replace(request.header, model=config)
        sized = replace(sized, train=plan.summary_for(sized, request.budget))
        format.fixed_overhead(sized) + family.predict_payload_nbytes(config, quant) <= budget

    (:meth:`file_nbytes` computes the left side). The planner then decides the summary and the
    payload budget once (:class:`napari_moec.plan.Plan`). Tiles are sized from a payload
    budget by the tiles' allocator (:mod:`napari_moec.tiled.allocate`), not through here.
    """

    header: Header
    budget: int
    options: Any
    #: A quality target (``--psnr``) sizes the model: ``budget`` is then only a ceiling, so a
    #: family should not size for the rate it allows (the grid family keeps its latents off
    #: the voxel lattice).
    quality_target: bool = False

    def file_nbytes(self, config: Any, predicted_payload: int) -> int:
        """Predicted bytes of the whole file holding ``config`` with a payload of
        ``predicted_payload`` bytes, the training summary's bytes included where it fits."""
        from dataclasses import replace

        from ..format import fixed_overhead
        from ..plan import summary_for

        sized = replace(self.header, model=config)
        sized = replace(sized, train=summary_for(sized, self.budget))
        return fixed_overhead(sized) + predicted_payload


class TrainingTarget(NamedTuple):
    """The data one training run fits: the normalised volume as a flat float32 tensor on the
    training device (C order of ``shape``), its shape, and the range it was normalised to
    (the header's ``"n"``: the span of the loop's PSNR). ``decoded``: (start, stop) per axis
    of the voxels a reader will decode (a tile inside its region with margin), None for all:
    what a family judges the files it keeps by (grid: checkpoints and the final choice)."""

    values: torch.Tensor
    shape: tuple[int, ...]
    norm: tuple[float, float] = (-1.0, 1.0)
    decoded: tuple[tuple[int, int], ...] | None = None


class StepStats(NamedTuple):
    """What one optimiser step reports to the shared loop. Tensors stay on the device (0-d,
    detached); the loop averages them and syncs once per report.

    ``distortion``: the step's mean squared error in normalised units (the loss's data term,
    what PSNR is computed from); ``kept``: fraction of sampled points that were evaluated
    (SIREN's capacity drops; 1 for others); ``load``: ``(num_experts,)`` share of points per
    expert (all ones for one expert); ``lr``: the (first group's) learning rate used;
    ``phase``: a short word the front ends show ("train", "frozen", "qat", "noise", "ste");
    ``restart_best``: True on the step a new phase makes earlier snapshots incomparable (the
    loop forgets its best-so-far snapshot, e.g. when quantization-aware training begins).
    """

    distortion: torch.Tensor
    kept: torch.Tensor
    load: torch.Tensor
    lr: float
    phase: str
    restart_best: bool = False


@runtime_checkable
class FamilyTrainer(Protocol):
    """The training behaviour of one model on one volume, made by
    :meth:`ModelFamily.trainer` and driven by :func:`napari_moec.training.train`.

    Optional: ``finish(best_state) -> str``. A trainer that keeps its own best result as
    files (grid: real payloads at checkpoints) makes the end-of-training choice itself; the
    loop then calls it with its best-so-far snapshot (or None) instead of judging the float
    weights (:func:`napari_moec.schedule.keep_better`), and it returns "last" or "best" as
    that function does."""

    #: The module being trained (``LossGuard`` snapshots and restores its state).
    model: torch.nn.Module
    #: Its optimiser (``LossGuard`` snapshots and restores its state).
    optimizer: torch.optim.Optimizer
    #: Length of :attr:`StepStats.load`.
    num_experts: int

    def step(self, progress: float, lr_scale: float) -> StepStats:
        """One optimiser step at ``progress`` in [0, 1) of the schedule (steps or time,
        whichever is further); ``lr_scale`` (<= 1) is the guard's back-off, to multiply every
        learning rate by. Draw any randomness from the trainer's generator only."""
        ...


@runtime_checkable
class DecodableModel(Protocol):
    """What the shared decoder and the end-of-training judge call on a built module."""

    def decode(self, coords: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(values (N, 1) normalised, labels (N,) int top-1 expert)`` at ``coords``,
        deterministic (eval mode, nothing dropped): what a reader of the file decodes.
        Families with one expert return zeros as labels."""
        ...

    def expert_labels(self, coords: torch.Tensor) -> torch.Tensor:
        """The labels of :meth:`decode` alone (cheaper where the family can skip values)."""
        ...

    def __call__(self, coords: torch.Tensor) -> Any:
        """In eval mode, an object whose ``.value`` is ``(N, 1)`` normalised values equal to
        :meth:`decode`'s (``decode.evaluate`` asks for values alone this way)."""
        ...

    # Also set by the SIREN-only MoE backend switch (``Compressed.use_backend``,
    # ``families.siren.tutel_backend.use_backend``): a plain attribute ``mixture``, which other
    # families may hold and ignore.


@runtime_checkable
class ModelFamily(Protocol):
    """A kind of network: everything the shared code asks of it. Implementations are
    stateless singletons (``families.get(name)``); all state lives in the model config,
    the module and the trainer."""

    #: Registry and header name.
    name: str
    #: The torch-network-free file side.
    codec: PayloadCodec
    #: Whether a store's tile fit is judged by the payload's error on the eval sample
    #: (``fit_payload(distortion=...)``). SIREN: False, its judged search refines the
    #: quantization per group (~0.5 s a tile) and SIREN stores keep the bytes they had before
    #: tiles of other families existed; grid: True, its fit picks between the budget fit and the
    #: best checkpoint by that error.
    judged_tile_fit: bool
    #: Whether the model's routing can run through Tutel (``--backend tutel``). The grid
    #: family cannot and need not: its decoder sits inside each expert's block, so its dropless
    #: counting-sort dispatch moves one scalar per assignment back, which Tutel's capacity-
    #: based dispatch/combine (built for wide expert outputs) would not make cheaper.
    tutel_routing: bool
    #: Whether the training loop's loss guard (``TrainConfig.guard``,
    #: :class:`~napari_moec.schedule.LossGuard`) watches this family's training loss. SIREN:
    #: True (a routing collapse took a file from 31 to 20 dB; guarded, 32.16). Grid: False:
    #: its training MSE rises by design whenever its rate controller tightens the rate (a tile
    #: at its budget: lam 0.1 -> 1.5 in 400 steps, the MSE 4x), which the guard read as a
    #: divergence, rolling back and halving the lr (one 128³ tile 32.7 dB guarded, 40.2
    #: without, session 27); the grid trainer keeps its best real payload by checkpoints.
    loss_guard: bool
    #: Tile and margin sizes a store chooses for this family ("auto").
    tile_policy: TilePolicy
    #: Whether a store judges this family's payloads on every voxel of the volume (what the
    #: file decodes to; grid, whose decode is one small MLP per voxel and whose store chooses
    #: between the last weights' fit and the best checkpoint's file by it) rather than on the
    #: eval sample (SIREN, whose full decode costs seconds per candidate).
    judged_on_volume: bool

    # -- sizing: no voxel is read -----------------------------------------------------------
    def default_options(self) -> Any:
        """The options used when the caller passes none (SIREN: ``ArchConfig()``)."""
        ...

    def size(self, request: SizeRequest) -> Any:
        """The model config to train for ``request`` (see :class:`SizeRequest`), all its
        ``None`` options chosen; options already fixed (e.g. a width) are kept. Raises
        :class:`~napari_moec.errors.ConfigError` naming the highest ratio that fits when no
        model fits the budget."""
        ...

    def predict_payload_nbytes(self, config: Any, quant: QuantConfig) -> int:
        """Predicted payload bytes of ``config`` (exact where the family can be)."""
        ...

    # -- building and training --------------------------------------------------------------
    def auto_steps(self, config: Any) -> int:
        """The optimiser steps a run of ``config`` trains where the user leaves ``steps`` to
        "auto" (``TrainConfig.steps`` None; a time limit still ends it earlier): what this
        family needs to come near its converged quality on the model's volume."""
        ...

    def build(self, config: Any, *, generator: torch.Generator) -> torch.nn.Module:
        """A freshly initialised module on the CPU (the caller moves it), initialised from
        ``generator`` only: the same generator state gives the same module."""
        ...

    def trainer(
        self,
        model: torch.nn.Module,
        config: Any,
        quant: QuantConfig,
        schedule: TrainConfig,
        target: TrainingTarget,
        *,
        device: torch.device,
        generator: torch.Generator,
        budget: int,
    ) -> FamilyTrainer:
        """The training behaviour for ``model`` (already on ``device``) fitting ``target``
        under ``schedule``; ``generator`` (on ``device``) is the only source of randomness
        during training. ``budget`` is the payload bytes the result will be stored in: a
        family that trains with the rate in its loss (grid) aims at it, one that fits the
        rate after training (SIREN) may ignore it."""
        ...

    # -- storing and reading ----------------------------------------------------------------
    def fit_payload(
        self,
        model: torch.nn.Module,
        config: Any,
        quant: QuantConfig,
        budget: int,
        *,
        distortion: Callable[[bytes], float] | None = None,
    ) -> Fit:
        """The payload of the trained ``model`` at the best quality within ``budget`` bytes
        (rate control). ``distortion(payload)`` (when given) is the error of the network a
        candidate payload decodes to, to choose between candidates. Raises
        :class:`~napari_moec.errors.TrainingError` when nothing fits."""
        ...

    def model_from_weights(self, config: Any, weights: Mapping[str, Any]) -> torch.nn.Module:
        """The module ``config`` describes holding ``weights`` (what
        :meth:`PayloadCodec.unpack_payload` returned), in eval mode, on the CPU: decoding it
        gives exactly what every reader of the file decodes."""
        ...

    def decode_region(
        self,
        model: torch.nn.Module,
        shape: Sequence[int],
        roi: Any = None,
        stride: Any = 1,
        *,
        device: torch.device | str | None = None,
        values: bool = True,
        labels: bool = True,
    ) -> tuple[np.ndarray | None, np.ndarray | None]:
        """``(values float32 normalised, labels uint8)`` on ``roi[::stride]`` of a volume of
        ``shape`` (ROI and stride as :meth:`napari_moec.Compressed.decode`); what was not
        asked for (``values=False`` or ``labels=False``) is None and costs nothing. Families
        without a faster path use :func:`napari_moec.decode.evaluate` (per-point)."""
        ...
