"""Learning-rate schedules and the loss guard: fewer steps to the same quality.

Measured on the shared volumes at equal steps (docs/benchmarks.md, "Time to quality"): a linear
warm-up then cosine decay from a 5e-3 peak (Cool-chic / C3 style) beats the exponential decay
from 2e-3 by 0.7-1.8 dB on the wide networks of 64x (widths 21-43). Without the warm-up a 5e-3
peak is unstable; narrow networks (the 256x ones, widths 9-20) are brittle at a high lr even
with it (ct_head 256x ended at 19-27 dB in 3 of 5 runs), so "auto" keeps the exponential
schedule below :data:`COSINE_MIN_WIDTH`.

The cosine schedule wins only on long runs: its 5e-3 peak costs the first few hundred steps,
which a short run never earns back. Measured on a 128³ macaque T1 tile (exponential vs cosine,
stored PSNR; ``benchmarks/schedule_steps.py``): width 35 at 1024x, 100 steps 28.35 vs 15.52 dB,
300 steps 31.92 vs 27.41, 600 steps 33.07 vs 33.61, 1000 steps 33.81 vs 34.64; width 72 at 256x,
300 steps 31.76 vs 20.98, 600 steps 33.16 vs 29.67, 1000 steps 33.98 vs 36.75. So "auto" also
keeps the exponential schedule for runs of fewer than :data:`COSINE_MIN_STEPS` steps (tiled
stores train a few hundred steps per tile: the cosine schedule had taken a 512³ store at 1024x
from 27.6 to 19.1 dB).

:class:`LossGuard` catches the other failure of a high lr: a sudden jump of the training loss
(a routing collapse, one expert taking most points), after which the run never recovers. It
restores a recent healthy snapshot and halves the lr. It reads the loss the loop already
measures every ``report_every`` steps, so it adds no host synchronisation and depends on no
clock: the same seed gives the same run on any machine.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch

from .config import ModelConfig, TrainConfig

__all__ = [
    "COSINE_MIN_STEPS",
    "COSINE_MIN_WIDTH",
    "DEFAULT_STEPS",
    "EVAL_POINTS",
    "LossGuard",
    "Schedule",
    "decoded_mse",
    "keep_better",
    "resolve_schedule",
]

#: Narrowest network width that gets the cosine schedule under "auto" (measured: widths 21,
#: 35, 43 gain; width 20 is unstable at its peak lr).
COSINE_MIN_WIDTH = 21
#: The steps a SIREN run trains where the user leaves them to "auto" (``TrainConfig.steps``
#: None; ``SirenFamily.auto_steps``): the paper's experts need ~80,000 V100 steps, far beyond a
#: CPU's minutes; 2000 is this family's default since its first release, kept so that a SIREN
#: run trains, and its files store, what they did.
DEFAULT_STEPS = 2000
#: Fewest steps a run needs for the cosine schedule under "auto" (measured: see above).
COSINE_MIN_STEPS = 1000
#: Voxels of the fixed set on which the last and the best-so-far weights are compared.
EVAL_POINTS = 1 << 16
#: Defaults of each schedule: (peak lr, final lr as a fraction of the peak).
_DEFAULTS = {"cosine": (5e-3, 0.01), "exponential": (2e-3, 0.05)}


@dataclass(frozen=True)
class Schedule:
    """The learning rate as a function of training progress in [0, 1].

    ``kind`` is "cosine" (linear warm-up over ``warmup``, then cosine decay from ``peak`` to
    ``peak * final``) or "exponential" (linear warm-up, then ``peak * final ** t``).
    """

    kind: str
    peak: float
    final: float
    warmup: float

    def lr(self, progress: float) -> float:
        if self.warmup > 0 and progress < self.warmup:
            # Start at 1/100 of the peak rather than 0: a first step of lr 0 teaches nothing.
            return self.peak * max(progress / self.warmup, 0.01)
        t = min(1.0, (progress - self.warmup) / max(1e-12, 1.0 - self.warmup))
        if self.kind == "exponential":
            return self.peak * self.final**t
        low = self.peak * self.final
        return low + (self.peak - low) * 0.5 * (1.0 + math.cos(math.pi * t))


def resolve_schedule(train: TrainConfig, model: ModelConfig) -> Schedule:
    """The schedule ``train`` asks for on a network ``model`` ("auto" and None resolved).

    The exponential schedule of earlier versions had no warm-up: it keeps none unless asked,
    so ``schedule="exponential"`` with the default lr reproduces earlier files exactly.
    """
    kind = train.schedule
    if kind == "auto":
        long_and_wide = (
            model.hidden_features >= COSINE_MIN_WIDTH
            and (DEFAULT_STEPS if train.steps is None else train.steps) >= COSINE_MIN_STEPS
        )
        kind = "cosine" if long_and_wide else "exponential"
    peak, final = _DEFAULTS[kind]
    warmup = train.warmup if kind == "cosine" else 0.0
    return Schedule(
        kind=kind,
        peak=peak if train.lr is None else train.lr,
        final=final if train.lr_final is None else train.lr_final,
        warmup=warmup,
    )


class LossGuard:
    """Roll back to a healthy snapshot and halve the learning rate when the loss jumps.

    Call :meth:`observe` with each measured training loss (the loop's ``report_every``
    average). The guard keeps an exponential moving average of it; while the average is near
    its best it snapshots the model and optimiser every ``snapshot_every`` steps; when the
    average exceeds ``ratio`` times its best, it restores the snapshot and multiplies
    :attr:`lr_scale` by ``backoff``. Measured on hipct 256x at a 5e-3 peak: a routing collapse
    took the file from 31 to 20.0 dB; with the guard the run ended at 32.16 dB.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        snapshot_every: int = 250,
        ratio: float = 2.0,
        backoff: float = 0.5,
        warm_steps: int = 100,
    ) -> None:
        self.model, self.optimizer = model, optimizer
        self.snapshot_every, self.ratio, self.backoff = snapshot_every, ratio, backoff
        self.warm_steps = warm_steps
        self.ema: float | None = None
        self.best = math.inf
        self.lr_scale = 1.0
        self.rollbacks: list[int] = []
        self._snapshot = None
        self._last_snapshot = -snapshot_every

    def observe(self, step: int, loss: float) -> bool:
        """Feed the loss measured at ``step``; returns True when it rolled back."""
        value = loss if math.isfinite(loss) else math.inf
        self.ema = value if self.ema is None else 0.7 * self.ema + 0.3 * value
        if step < self.warm_steps:
            return False
        self.best = min(self.best, self.ema)
        if self._snapshot is not None and self.ema > self.ratio * self.best:
            model_state, optimizer_state = self._snapshot
            self.model.load_state_dict(model_state)
            self.optimizer.load_state_dict(optimizer_state)
            self.lr_scale *= self.backoff
            self.rollbacks.append(step)
            self.ema = self.best
            return True
        if step - self._last_snapshot >= self.snapshot_every and self.ema <= 1.25 * self.best:
            self._snapshot = (
                copy.deepcopy(self.model.state_dict()),
                copy.deepcopy(self.optimizer.state_dict()),
            )
            self._last_snapshot = step
        return False


@torch.no_grad()
def decoded_mse(model, coords: torch.Tensor, target: torch.Tensor) -> float:
    """Mean squared error of ``model`` at ``coords`` against ``target``, decoded dropless as
    a reader decodes the file: the judge of every end-of-training choice."""
    value, _ = model.decode(coords)
    return float(((value[:, 0].float() - target) ** 2).mean())


@torch.no_grad()
def keep_better(model, best_state: dict | None, coords: torch.Tensor, target: torch.Tensor) -> str:
    """Load into ``model`` whichever of its current (last) weights and ``best_state`` fits
    ``target`` at ``coords`` better, evaluated dropless as the file will be decoded; returns
    "last" or "best".

    The best-so-far snapshot is chosen by the training loss, which is measured on random
    batches, with capacity-dropped points left out and before the router freezes: a noisy and
    biased judge. At the end of a decayed schedule the last weights are usually the better ones
    (measured, hipct 64x, 300 s: the snapshot of the lowest training loss stored 33.08 dB, the
    last weights 33.85 dB); after a Stop or a divergence the snapshot may be. A fixed set of
    voxels settles it for the cost of two forward passes.
    """
    if best_state is None:
        return "last"
    last_error = decoded_mse(model, coords, target)
    last_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    if decoded_mse(model, coords, target) < last_error:
        return "best"
    model.load_state_dict(last_state)
    return "last"
