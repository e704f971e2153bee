"""The grid family behind the model-family contract (``families/base.py``): thin adapters
over :mod:`.sizing`, :mod:`.train`, :mod:`.fit` and :mod:`.decode`.

Contract notes (what the shared code gets):

* ``size`` takes the whole-file budget and ``request.file_nbytes``; the payload budget is
  the budget minus the file's bytes besides the payload. ``predict_payload_nbytes`` is the
  payload the sizing *assumed* (side bytes, the network, ``sizing.min_latent_bits`` for
  the latents): a grid payload is filled to the budget by the rate control, whatever the config.
* ``trainer`` needs the payload budget (``budget=``), which the contract does not pass yet.
* The trainer reports the step's MSE, load and phase ("noise", then "ste" with
  ``restart_best`` on the switch: distortions of noisy and rounded latents do not compare).
* Keeping the best (:mod:`.train`, "Keeping the best"): the trainer checkpoints a real payload
  every ``checkpoint_every`` steps and keeps the best (``GridModel.best_payload``); at the end
  of training (``finish``) it checkpoints the loop's best-training-loss snapshot too and hands
  the *last* weights on, instead of the loop judging float weights (which a grid file does not
  decode to). ``fit_payload`` then keeps the better of the exact fit of the last weights and
  the best checkpoint by ``distortion``, which the store measures on the whole volume
  (``judged_on_volume``): the kept file is the best the run has seen, by the file's measure.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ...errors import ConfigError
from ..base import TilePolicy
from .codec import CODEC
from .config import GridConfig
from .decode import decode_region
from .fit import fit_budget, fit_quality, network_steps_for
from .model import GridModel
from .sizing import auto_config, auto_steps, predicted_payload_bytes
from .train import GridTrainer, TrainSettings

__all__ = ["FAMILY", "GridFamily", "GridOptions"]


@dataclass(frozen=True)
class GridOptions:
    """What a user may ask of the grid family; ``None`` is chosen by :func:`auto_config`."""

    num_experts: int = 1
    top_k: int | None = None
    hidden: int | None = None
    first_level: int | None = None
    gate_hidden: int | None = None
    kernel: str = "cubic"
    #: The latent entropy model. "cbc" (the checkerboard with the even latents conditioned on
    #: the coarser level) measured at equal steps against "cb" (``benchmarks/grid_fill.py V R
    #: --steps S --context cbc``, seed 0; docs/benchmarks.md, session 24): the macaque at 256x
    #: 48.46 against 46.58 dB at 24,000 steps, ct_head 64x 35.48 / 35.42 and hipct 64x 33.86 /
    #: 33.80 at 20,000. ``GridConfig``'s own default stays "cb" (format 1.0's golden file).
    context: str = "cbc"


def as_grid_options(options) -> GridOptions:
    """The grid family's options from what a front end hands over: :class:`GridOptions`
    unchanged, or the shared :class:`~napari_moec.config.ArchConfig` (experts, top-k and the
    hidden width carry over; the SIREN-only fields mean nothing here)."""
    if options is None:
        return GridOptions()
    if isinstance(options, GridOptions):
        return options
    experts = getattr(options, "num_experts", None) or 1
    return GridOptions(
        num_experts=experts,
        top_k=getattr(options, "top_k", None),
        hidden=getattr(options, "hidden_features", None),
    )


#: Experts evaluated per voxel where the user leaves it to "auto" and there is a router.
#: Measured at equal bytes and 5 idle minutes (4 experts, docs/benchmarks/time_to_quality.md):
#: top-2 ahead of top-1 in 8 of the 9 shared cells that fit a router, by 0.09 dB (hipct 64x)
#: to 2.31 dB (the macaque at 256x), behind at ct_head 256x (-0.38, where its step cost 1.7x
#: a top-1 step): with one expert per voxel a routed model gives up the blend across region
#: borders, where a grid model's error is.
AUTO_TOP_K = 2


def top_k_of(options: GridOptions) -> int:
    """The experts per voxel ``options`` ask for, "auto" (None) resolved: ``AUTO_TOP_K``
    where there is a router, capped at the experts."""
    top_k = AUTO_TOP_K if options.top_k is None else options.top_k
    return min(top_k, options.num_experts)


def _leaner(chosen: dict) -> list[dict]:
    """Sizing overrides to try in turn until a model fits: the default, then for the smallest
    budgets (a few hundred bytes, where the network is a third of the file) experts of one
    layer, then one layer 2 wide, unless the user chose the width."""
    ladder = [{}, {"expert_layers": 1}]
    if "hidden" not in chosen:
        ladder.append({"expert_layers": 1, "hidden": 2})
    return ladder


class GridFamilyTrainer:
    """The contract's ``FamilyTrainer`` over :class:`GridTrainer`."""

    def __init__(self, trainer: GridTrainer) -> None:
        self.inner = trainer
        self.model = trainer.model
        self.optimizer = trainer.opt
        self.num_experts = trainer.cfg.num_experts
        self._phase = "noise"
        # A quality target's store searches the smallest file that passes (``fit_quality``)
        # and has no use for checkpoints within the ceiling.
        self._keeps_files = trainer.target_mse is None

    def step(self, progress: float, lr_scale: float):
        from ..base import StepStats

        inner = self.inner
        s = inner.advance(progress, lr_scale)  # numbers stay on the device
        due = self._keeps_files and inner.step_count % inner.st.checkpoint_every == 0
        if due and inner.step_count < inner.st.steps:  # (the last step's file: the final fit)
            inner.checkpoint()
        restart, self._phase = s.phase != self._phase, s.phase
        return StepStats(
            s.mse,
            torch.ones((), device=s.mse.device),
            s.load,
            self.inner.opt.param_groups[0]["lr"],
            s.phase,
            restart,
        )

    def finish(self, best_state: dict | None) -> str:
        """The end-of-training choice (``FamilyTrainer``'s optional ``finish``): checkpoint
        the loop's best-so-far snapshot as a real file too, then leave the last weights in the
        model ("last"): the store fits them and keeps the best file of the run
        (module docstring)."""
        if best_state is not None and self._keeps_files:
            model = self.model
            last = {k: v.detach().clone() for k, v in model.state_dict().items()}
            model.load_state_dict(best_state)
            self.inner.checkpoint(exact=True)  # once a run: the whole budget search
            model.load_state_dict(last)
        return "last"


#: Tiles of a grid store (docs/tiled.md, "Seams, margins and tile size"). A grid tile's step
#: costs per latent (the rate term covers every latent every step), not per network, so a
#: tile's size is a trade between one tile's context and the workers' parallelism, and the
#: SIREN's 4 kB share (64^3 float32 tiles at 256x) leaves a grid tile few latents and a margin
#: as large as itself. Measured on the macaque mirrored to 256^3 at 256x (idle, 2 cores):
#: eight 128^3 tiles (32 kB shares), 4000 steps a tile on 2 workers, 44.44 dB in 367 s; one
#: 256^3 tile, 2000 steps on 2 threads, 43.01 dB in 203 s: about equal per CPU-second, and the
#: smaller tiles keep every worker busy. No margin (session 27, docs/tiled.md "Seams, margins
#: and tile size"): a grid tile's decoder reads latents within a few voxels, and a margin
#: costs a tile its steps (the stored box's second pass of contexts, ~15-20 % fewer steps in
#: 140 s with 4 voxels or 16) and a share of its samples. The whole macaque at 256x, four
#: tiles, 140 s a tile: margins 0 / 4 / 16 stored 47.26-47.36 / 46.61 / 46.78-47.00 dB (one
#: file of the same time 47.19-47.40); the 512^3 mirror's 256^3 crop, eight 128^3 tiles,
#: 1500 steps a tile, two tilings: 41.91 and 44.25 / 41.34 and 43.89 / 41.59 and 43.60 dB.
#: What it costs: the two voxel layers at a face decode 0.53 dB under the same voxels mid-tile
#: (0.18 with 4 voxels, 0.21 with 16). Session 12's margins (33.68 dB with none against 40.41
#: with 16) were the loss guard's rollbacks, which no longer watch grid training.
#: The difficulty split's exponent (tiled/allocate.py): 0.6, from the grid files' error falling
#: as bytes^-0.4 to bytes^-0.7, and measured on the whole macaque at 256x (0.3 / 0.6 / 1.0:
#: 45.62 / 45.88 / 45.79 dB, docs/tiled.md).
GRID_TILES = TilePolicy(
    edges=(64, 96, 128, 192, 256),
    target_bytes=32768,
    margin_fraction=0.0,
    min_margin=0,
    difficulty_exponent=0.6,
)


class GridFamily:
    """:class:`~napari_moec.families.base.ModelFamily` of the grid family."""

    name = "grid"
    judged_tile_fit = True
    tutel_routing = False
    judged_on_volume = True
    loss_guard = False
    tile_policy = GRID_TILES
    codec = CODEC

    def default_options(self) -> GridOptions:
        return GridOptions()

    def size(self, request) -> GridConfig:
        """The config for ``request`` (``base.SizeRequest``): the payload budget is the file
        budget minus ``request.file_nbytes(config, 0)`` (frame, header with ``config``,
        summary), then :func:`auto_config` chooses levels and width for it."""
        header = request.header
        opts = as_grid_options(request.options)
        kw = {k: v for k, v in vars(opts).items() if v is not None} | {"top_k": top_k_of(opts)}
        if request.quality_target:  # the budget is a ceiling: not the rate to size for
            kw["finest_level"] = 1
        need = None
        for lean in _leaner(kw):
            cfg = auto_config(header.shape, max(1, request.budget - 64), **kw, **lean)
            for _ in range(2):  # the header's size depends (weakly) on the config
                payload = request.budget - request.file_nbytes(cfg, 0)
                cfg = auto_config(header.shape, max(1, payload), **kw, **lean)
            need = request.file_nbytes(cfg, self.predict_payload_nbytes(cfg, header.quant))
            if need <= request.budget:
                return cfg
        nbytes = int(np.prod(header.shape)) * np.dtype(header.dtype).itemsize
        raise ConfigError(
            f"no grid model fits {request.budget} bytes, so the highest possible ratio is "
            f"about {nbytes / need:.0f}x"
        )

    def predict_payload_nbytes(self, config: GridConfig, quant) -> int:
        return predicted_payload_bytes(config)

    def auto_steps(self, config: GridConfig) -> int:
        return auto_steps(config)

    def build(self, config: GridConfig, *, generator: torch.Generator) -> GridModel:
        return GridModel(config, generator=generator)

    def trainer(
        self,
        model,
        config,
        quant,
        schedule,
        target,
        *,
        device,
        generator,
        budget: int,
        target_mse: float | None = None,
    ) -> GridFamilyTrainer:
        """``budget``: the payload bytes the rate term aims at; with ``target_mse`` (a
        quality target, normalised units) the rate term aims at that MSE instead and
        ``budget`` is only the ceiling the grids were sized for."""
        settings = TrainSettings(steps=schedule.steps, time_limit=schedule.time_limit)
        values = target.values.reshape(target.shape)
        inner = GridTrainer(
            values,
            config,
            budget,
            settings,
            device=device,
            model=model,
            generator=generator,
            target_mse=target_mse,
            decoded=target.decoded,
        )
        return GridFamilyTrainer(inner)

    def fit_payload(
        self,
        model,
        config,
        quant,
        budget: int,
        *,
        distortion: Callable[[bytes], float] | None = None,
    ):
        """The exact budget fit of ``model``'s weights, or the trainer's best checkpoint
        (``model.best_payload``) when it is better by ``distortion`` (module docstring)."""
        from ..base import Fit

        score = (lambda data: -distortion(data)) if distortion else (lambda data: 0.0)
        best = fit_budget(model, budget, score, network_steps_for(model.cfg, budget))
        saved = model.best_payload
        if (
            distortion
            and saved is not None
            and len(saved) <= budget
            and -distortion(saved) > best.score
        ):
            return Fit(saved, model.best_network_step, {})
        return Fit(best.payload, best.network_step, {})

    def fit_quality(self, model, budget: int, psnr_of: Callable[[bytes], float], target: float):
        """The smallest payload of at most ``budget`` bytes whose decoded PSNR (``psnr_of``)
        is >= ``target`` (:func:`.fit.fit_quality`; TrainingError when none is)."""
        from ..base import Fit

        best = fit_quality(model, budget, psnr_of, target)
        return Fit(best.payload, best.network_step, {})

    def model_from_weights(
        self, config: GridConfig, weights: Mapping[str, np.ndarray]
    ) -> GridModel:
        model = GridModel(config)
        with torch.no_grad():
            for i, y in enumerate(model.grids.latents):
                y.copy_(torch.as_tensor(weights[f"latents.{i}"]))
            for name, p in model.synth.stored().items():
                p.copy_(torch.as_tensor(weights[name]))
        return model.eval()

    def decode_region(
        self,
        model,
        shape: Sequence[int],
        roi=None,
        stride=1,
        *,
        device=None,
        values: bool = True,
        labels: bool = True,
    ):
        if tuple(shape) != model.cfg.shape:
            raise ConfigError(f"shape {tuple(shape)} is not the model's {model.cfg.shape}")
        if device is not None:
            model = model.to(device)
        return decode_region(model, roi, stride, values=values, labels=labels)


FAMILY = GridFamily()
