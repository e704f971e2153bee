"""The grid family behind the model-family contract (``families/base.py``): thin adapters
over :mod:`.sizing`, :mod:`.train`, :mod:`.fit` and :mod:`.decode`.

Contract notes (what the shared code gets):

* ``size`` takes the whole-file budget and ``request.file_nbytes``; the payload budget is
  the budget minus the file's bytes besides the payload. ``predict_payload_nbytes`` is the
  payload the sizing *assumed* (side bytes, the network, ``MIN_BITS_PER_LATENT`` per
  latent): a grid payload is filled to the budget by the rate control, whatever the config.
* ``trainer`` needs the payload budget (``budget=``), which the contract does not pass yet.
* The trainer reports the step's MSE, load and phase ("noise", then "ste" with
  ``restart_best`` on the switch: distortions of noisy and rounded latents do not compare).
* ``fit_payload`` keeps the best real payload the trainer's checkpoints saw
  (``GridModel.best_payload``) as a candidate besides the fits of the final model.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ...errors import ConfigError
from .codec import CODEC
from .config import GridConfig
from .decode import decode_region
from .fit import fit_budget, fit_quality
from .model import GridModel
from .payload import side_bytes
from .sizing import MIN_BITS_PER_LATENT, auto_config, network_bytes
from .train import GridTrainer, TrainSettings

__all__ = ["FAMILY", "GridFamily", "GridOptions"]


@dataclass(frozen=True)
class GridOptions:
    """What a user may ask of the grid family; ``None`` is chosen by :func:`auto_config`."""

    num_experts: int = 1
    top_k: int = 1
    hidden: int | None = None
    first_level: int | None = None
    kernel: str = "cubic"
    context: str = "cb"


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
        top_k=min(getattr(options, "top_k", 1), experts),
        hidden=getattr(options, "hidden_features", None),
    )


class GridFamilyTrainer:
    """The contract's ``FamilyTrainer`` over :class:`GridTrainer`."""

    def __init__(self, trainer: GridTrainer) -> None:
        self.inner = trainer
        self.model = trainer.model
        self.optimizer = trainer.opt
        self.num_experts = trainer.cfg.num_experts
        self._phase = "noise"

    def step(self, progress: float, lr_scale: float):
        from ..base import StepStats

        s = self.inner.advance(progress, lr_scale)  # numbers stay on the device
        restart, self._phase = s.phase != self._phase, s.phase
        return StepStats(
            s.mse,
            torch.ones((), device=s.mse.device),
            s.load,
            self.inner.opt.param_groups[0]["lr"],
            s.phase,
            restart,
        )


class GridFamily:
    """:class:`~napari_moec.families.base.ModelFamily` of the grid family."""

    name = "grid"
    judged_tile_fit = True
    tutel_routing = False
    codec = CODEC

    def default_options(self) -> GridOptions:
        return GridOptions()

    def size(self, request) -> GridConfig:
        """The config for ``request`` (``base.SizeRequest``): the payload budget is the file
        budget minus ``request.file_nbytes(config, 0)`` (frame, header with ``config``,
        summary), then :func:`auto_config` chooses levels and width for it."""
        header = request.header
        opts = as_grid_options(request.options)
        kw = {k: v for k, v in vars(opts).items() if v is not None}
        cfg = auto_config(header.shape, max(1, request.budget - 64), **kw)
        for _ in range(2):  # the header's size depends (weakly) on the config
            payload = request.budget - request.file_nbytes(cfg, 0)
            cfg = auto_config(header.shape, max(1, payload), **kw)
        need = request.file_nbytes(cfg, self.predict_payload_nbytes(cfg, header.quant))
        if need > request.budget:
            nbytes = int(np.prod(header.shape)) * np.dtype(header.dtype).itemsize
            raise ConfigError(
                f"no grid model fits {request.budget} bytes, so the highest possible ratio is "
                f"about {nbytes / need:.0f}x"
            )
        return cfg

    def predict_payload_nbytes(self, config: GridConfig, quant) -> int:
        latent = int(np.ceil(config.latent_count * MIN_BITS_PER_LATENT / 8))
        return side_bytes(config) + network_bytes(config) + latent

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
        from ..base import Fit

        score = (lambda data: -distortion(data)) if distortion else (lambda data: 0.0)
        best = fit_budget(model, budget, score)
        saved = model.best_payload
        if (
            distortion
            and saved is not None
            and len(saved) <= budget
            and -distortion(saved) > best.score
        ):
            return Fit(saved, 1.0, {})
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
