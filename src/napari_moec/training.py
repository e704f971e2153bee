"""Training, and the compression job that chains plan → train → store.

:func:`train` is the training loop of every model family, without a ratio: it fits a built
model to a normalised volume under a schedule, as a generator of progress events, and returns
the trained model (:class:`Trained`). What one optimiser step does is the family's
(:class:`~napari_moec.families.base.FamilyTrainer`); the loop owns steps and time, stopping,
reporting, the loss guard, the best-so-far snapshot, the end-of-training choice and previews.
Tiles call it directly (:func:`napari_moec.tiled.task.compress_tile`).

:class:`Compressor` is one volume's job: ``Compressor.run()`` plans
(:func:`~napari_moec.plan.plan`), trains and stores at the plan's payload budget, and returns
the finished :class:`~napari_moec.compressed.Compressed`.

Front ends drive it: the CLI drains it with a progress bar, the napari widget runs it in a
worker thread (``worker.pause()`` acts between yields, which come once per optimiser step) and
calls :meth:`Compressor.stop` to end training early, which still quantizes, codes and returns
the best model so far. Paper §3.5/§4.1: joint router + expert training with MSE plus the
balance loss, expert capacity with uniform dispatch, router frozen late in the schedule
(:mod:`napari_moec.families.siren.family`).

Planning (checks, sizing) is :mod:`napari_moec.plan`; storing the result at the finest
quantization that fits is the family's rate control (SIREN: :mod:`napari_moec.rate`).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import replace
from typing import NamedTuple

import numpy as np
import torch

from . import bounded, families
from .compressed import Compressed, Report
from .config import ArchConfig, BoundConfig, PreviewConfig, QuantConfig, RunConfig, TrainConfig
from .correction import plan_bound
from .decode import grid_shape, parse_roi
from .devices import check_threads, resolve_device
from .errors import ConfigError, TrainingError
from .events import Finalizing, Preview, Progress, RegionPreview, Started, TrainEvent
from .families.base import ModelFamily, TrainingTarget
from .families.siren.tutel_backend import resolve_backend, use_backend
from .format import TrainingSummary, frame
from .generators import drain
from .metrics import psnr, ssim, ssim_applies
from .plan import Plan, plan
from .rate import frame_with_summary
from .sampling import Normalization, flat_index_coords
from .schedule import EVAL_POINTS, LossGuard, decoded_mse, keep_better
from .volumes import check_volume

__all__ = ["PSNR_CAP_RATIO", "Compressor", "Trained", "eval_set", "quality_mse", "train"]

#: The least ratio of a ``target_psnr`` run when no ratio is given: the byte ceiling the
#: grids are sized for (the file is usually far smaller: the target decides).
PSNR_CAP_RATIO = 8.0
#: dB above the target the training aims at: the store then trims to the target exactly.
PSNR_AIM_MARGIN = 0.15


def quality_mse(target_psnr: float, norm: tuple[float, float]) -> float:
    """The MSE (normalised units) the training aims at for ``target_psnr``: PSNR over the data
    range is the PSNR of the normalised values with peak ``norm[1] - norm[0]``."""
    return (norm[1] - norm[0]) ** 2 * 10 ** (-(target_psnr + PSNR_AIM_MARGIN) / 10)


class Trained(NamedTuple):
    """What :func:`train` returns: the model with the better of its last and best-so-far
    weights loaded (``final_choice`` says which), the steps and active seconds it trained,
    and the fixed (coordinates, targets) set that chose (the rate control's judge too)."""

    model: torch.nn.Module
    steps: int
    seconds: float
    final_choice: str
    eval_set: tuple[torch.Tensor, torch.Tensor]


def eval_set(
    target: TrainingTarget, seed: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed random set of voxels (coordinates, normalised targets), the same for a seed
    (drawn from ``seed + 1``, apart from training's draws): the judge of the end-of-training
    choices (which weights, which quantization)."""
    n_voxels = target.values.numel()
    gen = torch.Generator(device=device).manual_seed(seed + 1)
    index = torch.randint(n_voxels, (min(n_voxels, EVAL_POINTS),), device=device,
                          generator=gen)  # fmt: skip
    return flat_index_coords(index, target.shape), target.values.to(device)[index]


def train(
    volume: TrainingTarget,
    model: torch.nn.Module,
    schedule: TrainConfig,
    *,
    device: torch.device,
    generator: torch.Generator,
    family: ModelFamily,
    config,
    quant: QuantConfig,
    budget: int,
    stop: threading.Event | None = None,
    preview: PreviewConfig | None = None,
    make_preview: Callable[[torch.nn.Module, int], Preview] | None = None,
) -> Generator[Progress | Preview, None, Trained]:
    """Train ``model`` (built by ``family`` for ``config``, on ``device``) on the normalised
    ``volume`` under ``schedule``; yields :class:`Progress` once per step (and
    :class:`Preview` when ``preview`` says, made by ``make_preview(model, step)``); returns
    :class:`Trained`.

    No ratio, no plan: the byte budget shaped ``config`` before, and storing comes after.
    ``generator`` (on ``device``) is training's only randomness (the family's trainer draws
    from it); ``stop`` ends training at the next step, keeping the better weights as usual.
    """
    cfg = schedule
    quality = {}  # a quality target: the MSE its PSNR allows, with a margin (quality_mse)
    if cfg.target_psnr is not None:
        quality["target_mse"] = quality_mse(cfg.target_psnr, volume.norm)
    trainer = family.trainer(model, config, quant, cfg, volume, device=device,
                             generator=generator, budget=budget, **quality)  # fmt: skip
    guarded = cfg.guard and family.loss_guard  # (ModelFamily.loss_guard)
    guard = LossGuard(model, trainer.optimizer) if guarded else None
    span = (volume.norm[1] - volume.norm[0]) ** 2  # PSNR of the normalised values
    experts = trainer.num_experts
    step, active = 0, 0.0
    best_loss, best_state = math.inf, None
    ema = None
    acc_mse = torch.zeros((), device=device)
    acc_drop = torch.zeros((), device=device)
    acc_load = torch.zeros(experts, device=device)
    acc_n = 0
    loss_value, psnr_value = math.nan, math.nan
    load_value = np.full(experts, 1.0 / experts)
    drop_value = 0.0
    preview = preview or PreviewConfig()
    previews = _PreviewSchedule(preview)
    previewing = make_preview is not None and preview.enabled
    while stop is None or not stop.is_set():
        progress = step / cfg.steps
        if cfg.time_limit:
            progress = max(progress, active / cfg.time_limit)
        if progress >= 1.0:
            break
        t0 = time.perf_counter()
        stats = trainer.step(progress, guard.lr_scale if guard else 1.0)
        if stats.restart_best:
            best_loss, best_state, ema = math.inf, None, None
        step += 1
        acc_mse += stats.distortion
        acc_drop += 1.0 - stats.kept
        acc_load += stats.load
        acc_n += 1

        if step % cfg.report_every == 0 or step == cfg.steps:
            loss_value = float(acc_mse) / acc_n  # the one host sync per report
            rolled_back = guard is not None and guard.observe(step, loss_value)
            if not math.isfinite(loss_value) and not rolled_back:
                peak = getattr(trainer, "peak_lr", None)
                raise TrainingError(
                    f"loss became {loss_value} at step {step}; try a lower lr"
                    + ("" if peak is None else f" (now {peak:g})")
                )
            psnr_value = 10 * math.log10(span / max(loss_value, 1e-30))
            load_value = (acc_load / acc_n).cpu().numpy()
            drop_value = float(acc_drop) / acc_n
            acc_mse.zero_(), acc_drop.zero_(), acc_load.zero_()
            acc_n = 0
            if rolled_back:
                ema = None  # the loss that tripped the guard belongs to discarded weights
            else:
                ema = loss_value if ema is None else 0.7 * ema + 0.3 * loss_value
            if ema is not None and ema < best_loss:
                best_loss = ema
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        active += time.perf_counter() - t0
        eta = active / step * (cfg.steps - step)
        if cfg.time_limit:
            eta = min(eta, max(0.0, cfg.time_limit - active))
        yield Progress(
            step=step,
            total_steps=cfg.steps,
            loss=loss_value,
            psnr=psnr_value,
            expert_load=load_value,
            dropped_fraction=drop_value,
            lr=stats.lr,
            elapsed=active,
            eta=eta,
            phase=stats.phase,
        )
        if previewing and previews.due(step, active):
            yield make_preview(model, step)

    if previewing and previews.last_step != step:
        # Always one preview of the end of training, before the result (which takes a
        # moment more to quantize, code and measure).
        yield make_preview(model, step)
    judge = eval_set(volume, cfg.seed, device)
    finish = getattr(trainer, "finish", None)  # a trainer that keeps its best as files
    if finish is not None:
        final_choice = finish(best_state)
    else:
        final_choice = keep_better(model, best_state, *judge)
    return Trained(model, step, active, final_choice, judge)


class Compressor:
    """Compress one volume to a byte budget.

    Parameters
    ----------
    volume : ndarray
        3D (ZYX) or 4D (TZYX/CZYX) array of uint8, uint16, int16 or float32.
    ratio : float
        Target ``original bytes / file bytes``; the file is guaranteed to be no larger.
    arch, train, quant
        Architecture choices (:class:`ArchConfig`; by default the width, the number of experts
        and the first layer's ω0 follow from the budget, see :func:`~napari_moec.plan.plan`),
        schedule (:class:`TrainConfig`) and stored precision (:class:`QuantConfig`).
    axes, spacing, unit
        Stored in the file (axes default to "ZYX"/"TZYX").
    run
        Device, CPU threads and MoE backend (:class:`RunConfig`); they do not change the file's
        format.
    preview
        When to yield :class:`Preview` events and what they cost (:class:`PreviewConfig`);
        None for no previews.
    bound
        A guaranteed maximum error (:class:`BoundConfig`): the model is trained and stored at
        ``ratio`` as usual and a verified correction layer is added after it, so the bound is
        then the promise and the ratio only the model's (:mod:`napari_moec.bounded`).

    Examples
    --------
    >>> comp = Compressor(volume, ratio=256)              # doctest: +SKIP
    >>> for event in comp.run(): ...                       # doctest: +SKIP
    """

    def __init__(
        self,
        volume: np.ndarray,
        ratio: float | None = None,
        *,
        arch: ArchConfig | None = None,
        train: TrainConfig | None = None,
        quant: QuantConfig | None = None,
        axes: str | None = None,
        spacing=None,
        unit: str | None = None,
        norm_range: tuple[float, float] = (-1.0, 1.0),
        run: RunConfig | None = None,
        preview: PreviewConfig | None = None,
        family: str | None = None,
        bound: BoundConfig | None = None,
    ) -> None:
        volume = check_volume(volume)
        self.volume = volume
        self.train_config = train or TrainConfig()
        #: The PSNR promised (``TrainConfig.target_psnr``), or None: the ratio sets the size.
        self.target_psnr = self.train_config.target_psnr
        if ratio is None:
            ratio = 256.0 if self.target_psnr is None else PSNR_CAP_RATIO
        self.run_config = run or RunConfig()
        self.device = resolve_device(self.run_config.device)
        self.normalization = Normalization.of(volume, *norm_range)
        #: The absolute bound every decoded voxel keeps (data units), or None: checked here,
        #: before any training, so an impossible bound fails at once.
        self.max_error: float | None = (bound or BoundConfig()).resolve(
            (self.normalization.vmin, self.normalization.vmax)
        )
        if self.max_error is not None:
            plan_bound(
                self.max_error, volume.dtype, (self.normalization.vmin, self.normalization.vmax)
            )
        #: What will be stored and what it costs (header, budget, sized network).
        self.plan: Plan = plan(
            volume.shape,
            volume.dtype,
            ratio,
            arch=arch,
            quant=quant,
            axes=axes,
            spacing=spacing,
            unit=unit,
            value_range=(self.normalization.vmin, self.normalization.vmax),
            norm_range=norm_range,
            family=family,
            quality_target=self.target_psnr is not None,
        )
        #: The model family the plan sized (:mod:`napari_moec.families`).
        self.family: ModelFamily = families.get(self.plan.family)
        if self.target_psnr is not None and not hasattr(self.family, "fit_quality"):
            raise ConfigError(
                f"target PSNR needs --model grid (model={self.plan.family!r} has no quality target)"
            )
        if self.train_config.steps is None:  # "auto": the family's, for the model it sized
            steps = self.family.auto_steps(self.plan.model)
            self.train_config = replace(self.train_config, steps=steps)
        self.preview = preview or PreviewConfig()
        self.threads = check_threads(self.run_config.threads)
        #: The concrete MoE backend, "native" or "tutel"
        #: (:mod:`napari_moec.families.siren.tutel_backend`): resolved here so that asking for a
        #: missing Tutel fails before any work.
        if self.run_config.backend == "tutel" and not self.family.tutel_routing:
            raise ConfigError(
                f"--backend tutel routes the SIREN family's experts; model="
                f"{self.plan.family!r} dispatches with its own dropless counting sort "
                "(one scalar per assignment): use --backend auto or --model siren"
            )
        self.backend = resolve_backend(self.run_config.backend, self.device, self.threads)
        if not self.family.tutel_routing:
            self.backend = "native"  # "auto" on a machine with Tutel
        self._stop = threading.Event()
        self._regions_lock = threading.Lock()
        self._regions: tuple[tuple[slice, ...], ...] = ()
        #: The network being trained (None before ``run`` starts). Read it only between
        #: events, from the thread that drives ``run``.
        self.model: torch.nn.Module | None = None
        #: After training: "last" or "best", the weights kept (see schedule.keep_better).
        self.final_choice: str | None = None
        #: (coordinates, targets) of :func:`eval_set`, made on first use.
        self._eval: tuple[torch.Tensor, torch.Tensor] | None = None
        #: The normalised volume (float32), made on first use by :meth:`payload_volume_error`.
        self._normalised: np.ndarray | None = None

    # -- what the plan decided -------------------------------------------------------------
    @property
    def header(self):
        return self.plan.header

    @property
    def budget(self) -> int:
        return self.plan.budget

    @property
    def model_config(self):
        return self.plan.model

    # -- control from other threads --------------------------------------------------------
    def stop(self) -> None:
        """Ask :meth:`run` to end training at the next step and finish with the best model."""
        self._stop.set()

    def request_regions(self, rois: Sequence) -> None:
        """Decode these regions at full resolution in every following :class:`Preview`.

        Thread-safe: a front end calls it whenever the user's view changes (e.g. the plane
        shown in napari: one ROI with the non-displayed axes fixed). Each ROI is as in
        :meth:`Compressed.decode`; regions larger than ``preview.region_voxels`` are skipped.
        """
        shape = self.header.shape
        checked = []
        for roi in rois:
            slices = parse_roi(roi, shape)
            if math.prod(s.stop - s.start for s in slices) <= self.preview.region_voxels:
                checked.append(slices)
        with self._regions_lock:
            self._regions = tuple(checked)

    # ------------------------------------------------------------------------------------
    def fit(self) -> Compressed:
        """Run to the end, ignoring the events: the blocking form of :meth:`run`."""
        return drain(self.run())

    def run(self) -> Generator[TrainEvent, None, Compressed]:
        """Train, then quantize and code. Yields events; returns the :class:`Compressed`."""
        device = self.device
        threads = torch.get_num_threads()
        if device.type == "cpu":
            # set_num_threads is per thread here: a worker thread starts with its own default.
            torch.set_num_threads(self.threads)
        try:
            model, steps, seconds = yield from self.train()
            stopped = self._stop.is_set()
            yield Finalizing(step=steps, stopped=stopped)
            return self.store(model, steps, seconds, stopped=stopped)
        finally:
            torch.set_num_threads(threads)
            if device.type == "cuda":
                torch.cuda.empty_cache()

    def train(self) -> Generator[TrainEvent, None, tuple[torch.nn.Module, int, float]]:
        """Build the planned model and train it (:func:`train`): yields events, returns
        ``(model, steps, seconds)`` with the better of the last and best weights loaded (float,
        not yet stored). :meth:`run` is this followed by :meth:`store`. Call it from inside
        :meth:`run`, or set the threads yourself (``torch.set_num_threads(self.threads)``)."""
        device, cfg, header = self.device, self.train_config, self.header
        model = self.family.build(header.model, generator=torch.Generator().manual_seed(cfg.seed))
        model = model.to(device)
        use_backend(model, self.backend)
        self.model = model
        target = torch.from_numpy(self.normalization.apply(self.volume).reshape(-1)).to(device)
        yield Started(
            total_steps=cfg.steps,
            time_limit=cfg.time_limit,
            num_parameters=self.plan.num_parameters,
            predicted_nbytes=self.plan.predicted_nbytes,
            budget_nbytes=self.budget,
            device=str(device),
            model=header.model,
        )
        trained = yield from train(
            TrainingTarget(target, header.shape, header.norm),
            model,
            cfg,
            device=device,
            generator=torch.Generator(device=device).manual_seed(cfg.seed),
            family=self.family,
            config=header.model,
            quant=header.quant,
            budget=self.plan.payload_budget,
            stop=self._stop,
            preview=self.preview,
            make_preview=self._preview,
        )
        self._eval = trained.eval_set
        self.final_choice = trained.final_choice
        return trained.model, trained.steps, trained.seconds

    @property
    def payload_budget(self) -> int:
        """Bytes the weights may take (the plan's :attr:`~napari_moec.plan.Plan.payload_budget`)."""
        return self.plan.payload_budget

    def payload_error(self, payload: bytes) -> float:
        """Mean squared error (normalised units) of the network a payload holds, decoded as a
        reader will: the rate controller's judge of quantization choices
        (:func:`~napari_moec.rate.fit_payload`). On :func:`eval_set`, or on every voxel for a
        family ``judged_on_volume`` (grid: its fit keeps the exact fit of the last weights
        or the best checkpoint's file, whichever decodes better over the whole volume, the
        measure of the grid trainer's own final choice, ``GridTrainer.score``)."""
        if self.family.judged_on_volume:
            return self.payload_volume_error(payload)
        if self._eval is None:
            values = torch.from_numpy(self.normalization.apply(self.volume).reshape(-1))
            target = TrainingTarget(values, self.header.shape, self.header.norm)
            self._eval = eval_set(target, self.train_config.seed, self.device)
        coords, target = self._eval
        header = self.header
        weights = self.family.codec.unpack_payload(header.model, header.quant, payload)
        candidate = self.family.model_from_weights(header.model, weights).to(self.device)
        use_backend(candidate, self.backend)
        return decoded_mse(candidate, coords, target)

    def payload_volume_error(self, payload: bytes) -> float:
        """Mean squared error (normalised units, float64) over every voxel of the volume a
        payload decodes to, before the cast to the data type: the grid trainer's
        ``GridTrainer.score`` of the same bytes, so the store's choice and the checkpoints'
        compare like with like."""
        _, values, _ = self._decode_payload(payload, labels=False)
        if self._normalised is None:
            self._normalised = self.normalization.apply(self.volume).reshape(self.header.shape)
        return float(np.mean((values.astype(np.float64) - self._normalised) ** 2))

    def payload_psnr(self, payload: bytes) -> float:
        """PSNR over the data range of the whole volume a payload decodes to, in the original
        dtype (what a reader gets): the judge of a quality target (``target_psnr``)."""
        _, values, _ = self._decode_payload(payload, labels=False)
        return psnr(self.volume, self.normalization.invert(values, self.volume.dtype))

    def preview_stride(self) -> tuple[int, ...]:
        """The stride of a preview's whole-volume grid: at most ``preview.voxels`` voxels."""
        shape = self.header.shape
        spatial = shape[-3:]
        s = max(1, math.ceil((math.prod(shape) / self.preview.voxels) ** (1 / len(spatial))))
        return (1,) * (len(shape) - 3) + tuple(min(s, n) for n in spatial)

    def preview_shape(self) -> tuple[int, ...]:
        """Shape of a preview's whole-volume grid."""
        return grid_shape(self.header.shape, None, self.preview_stride())

    def _preview(self, model: torch.nn.Module, step: int) -> Preview:
        device = self.device
        shape, dtype = self.header.shape, self.volume.dtype
        stride = self.preview_stride()
        values, labels = self.family.decode_region(model, shape, None, stride, device=device)
        with self._regions_lock:
            rois = self._regions
        regions = []
        for roi in rois:
            r_values, r_labels = self.family.decode_region(model, shape, roi, 1, device=device)
            regions.append(RegionPreview(roi, self.normalization.invert(r_values, dtype), r_labels))
        image = self.normalization.invert(values, dtype)
        return Preview(step=step, stride=stride, image=image, labels=labels, regions=tuple(regions))

    # ------------------------------------------------------------------------------------
    def _decode_payload(self, payload: bytes, labels: bool = True):
        """The stored network a payload holds, and its whole-volume decode (normalised
        values, and the expert labels when asked), as a reader will decode it."""
        header, family = self.header, self.family
        weights = family.codec.unpack_payload(header.model, header.quant, payload)
        stored = family.model_from_weights(header.model, weights)
        use_backend(stored, self.backend)
        values, label_values = family.decode_region(
            stored.to(self.device), header.shape, device=self.device, labels=labels
        )
        return stored, values, label_values

    def _store_bounded(self, model: torch.nn.Module):
        """The network's share of a ``max_error`` file, chosen by measurement: the trained
        model stored at its budget and at :data:`BOUND_SHARES` of it (coarser quantization,
        no retraining), each with its verified correction; the smallest file wins.

        At a loose bound the network's prediction leaves few residuals and its full budget
        pays; at a tight one the residual is noise whatever the network, the correction codes
        most chunks from the data itself (correction stream version 3) and the network's bytes
        are mostly overhead. Returns ``(fit, stored model, labels, correction, decoded,
        measured error)``.
        """
        family, header = self.family, self.header
        best, best_size = None, math.inf
        shares = BOUND_SHARES if self.target_psnr is None else (1.0,)
        for share in shares:
            limit = int(self.plan.payload_budget * share)
            try:
                if self.target_psnr is not None:  # the quality asked for fixes the network
                    fit = family.fit_quality(model, limit, self.payload_psnr, self.target_psnr)
                else:
                    fit = family.fit_payload(
                        model, header.model, header.quant, limit,
                        distortion=self.payload_error if share == 1 else None,
                    )  # fmt: skip
            except (ConfigError, TrainingError):
                if share == 1:
                    raise
                continue  # the family stores nothing that small: the larger shares stand
            if best is not None and len(fit.payload) >= len(best[0].payload):
                continue  # no smaller than a candidate already measured
            stored, values, labels = self._decode_payload(fit.payload)
            unstable = bounded.router_unstable(stored, header.shape, self.device)
            raw, decoded, measured = bounded.encode(
                self.volume, values, self.normalization, self.max_error, unstable
            )
            if len(fit.payload) + len(raw) < best_size:
                best_size = len(fit.payload) + len(raw)
                best = (fit, stored, labels, raw, decoded, measured)
        return best

    def store(
        self, model: torch.nn.Module, steps: int, seconds: float, *, stopped: bool = False
    ) -> Compressed:
        """Store ``model``'s weights as this compression's ``.moec`` file: at the finest
        quantization that fits (:mod:`rate`), decoded once as the file holds them, measured,
        and framed with the training summary. :meth:`run` calls it with the trained model;
        benchmarks call it on snapshots to measure quality along training.
        """
        device, family = self.device, self.family
        header, budget = self.header, self.budget
        if self.max_error is not None:
            bounded_fit = self._store_bounded(model)
            (payload, multiplier, extra_bits), stored, labels, raw, decoded, measured = bounded_fit
        else:
            if self.target_psnr is not None:
                fit = family.fit_quality(
                    model, self.plan.payload_budget, self.payload_psnr, self.target_psnr
                )
            else:
                fit = family.fit_payload(
                    model, header.model, header.quant, self.plan.payload_budget,
                    distortion=self.payload_error,
                )  # fmt: skip
            payload, multiplier, extra_bits = fit
            stored, values, labels = self._decode_payload(payload)
            raw, measured = b"", None
            decoded = self.normalization.invert(values, self.volume.dtype)
        psnr_value = round(psnr(self.volume, decoded), 2)
        summary = None
        if self.plan.stores_summary:
            summary = TrainingSummary(
                steps=steps,
                psnr=psnr_value,
                seconds=round(seconds, 1),
                device=device.type,
                target_psnr=self.target_psnr,
            )
        data, stored_header = frame_with_summary(header, payload, summary, budget)
        if raw:
            # The model kept its budget above; the correction comes on top (the bound is the
            # promise now, the ratio is what the file reaches).
            stored_header = replace(stored_header, correction=len(raw))
            data = frame(stored_header, payload, raw)
        report = Report(
            budget_bytes=budget,
            predicted_bytes=self.plan.predicted_nbytes,
            file_bytes=len(data),
            ratio=header.original_nbytes / len(data),
            parameters=self.plan.num_parameters,
            hidden_features=header.model.hidden_features,
            w0_first=getattr(header.model, "w0_first", None),  # SIREN's only
            quant_multiplier=multiplier,
            quant_extra_bits=extra_bits,
            psnr=psnr_value,
            psnr_dtype=psnr(self.volume, decoded, "dtype"),
            ssim=ssim(self.volume, decoded) if ssim_applies(self.volume.shape) else None,
            steps=steps,
            seconds=seconds,
            device=str(device),
            stopped_early=stopped,
            max_error=self.max_error,
            max_error_measured=measured,
            correction_bytes=len(raw),
        )
        result = Compressed(data, stored_header, report, stored.cpu(), (decoded, labels))
        if raw:
            result.attach_correction(raw)
        return result


#: Shares of the model's budget a ``max_error`` file tries for the network (one training
#: run, coarser quantization); the smallest network + correction is kept
#: (:meth:`Compressor._store_bounded`).
BOUND_SHARES = (1.0, 0.5, 0.25, 0.125, 0.03125)


class _PreviewSchedule:
    """When the next preview is due: every ``every_steps`` steps and/or ``every_seconds``."""

    def __init__(self, config: PreviewConfig) -> None:
        self.config = config
        self.next_time = config.every_seconds
        self.last_step = 0

    def due(self, step: int, elapsed: float) -> bool:
        cfg = self.config
        by_steps = cfg.every_steps is not None and step % cfg.every_steps == 0
        by_time = self.next_time is not None and elapsed >= self.next_time
        if not (by_steps or by_time):
            return False
        if cfg.every_seconds is not None:
            self.next_time = elapsed + cfg.every_seconds
        self.last_step = step
        return True
