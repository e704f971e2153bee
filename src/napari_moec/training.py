"""The compression loop: ``Compressor.run()`` trains a MoE SIREN on a volume as a generator of
progress events and returns the finished :class:`~napari_moec.compressed.Compressed`.

Front ends drive it: the CLI drains it with a progress bar, the napari widget runs it in a
worker thread (``worker.pause()`` acts between yields, which come once per optimiser step) and
calls :meth:`Compressor.stop` to end training early, which still quantizes, codes and returns
the best model so far. Paper §3.5/§4.1: joint router + expert training with MSE plus the
balance loss, expert capacity with uniform dispatch, router frozen late in the schedule.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Generator
from dataclasses import replace

import numpy as np
import torch
from torch.func import functional_call

from .budget import (
    DEFAULT_EXPERTS,
    budget_nbytes,
    count_parameters,
    first_layer_w0,
    gate_width,
    predict_nbytes,
    size_model,
    size_model_auto_experts,
    summary_for,
    summary_reserve,
)
from .compressed import Compressed
from .config import ModelConfig, QuantConfig, TrainConfig
from .decode import evaluate
from .errors import ConfigError, TrainingError
from .events import Finalizing, Preview, Progress, Started, TrainEvent
from .format import Header, pack
from .metrics import psnr, ssim
from .nn.moe import MoESiren
from .quantize import fake_quantize
from .sampling import Normalization, check_volume, flat_index_coords

__all__ = ["Compressor", "resolve_device"]


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None``/"auto" -> CUDA when present, else CPU; anything else must exist."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was asked for but no CUDA GPU is available")
    return device


class Compressor:
    """Compress one volume to a byte budget.

    Parameters
    ----------
    volume : ndarray
        3D (ZYX) or 4D (TZYX/CZYX) array of uint8, uint16, int16 or float32.
    ratio : float
        Target ``original bytes / file bytes``; the file is guaranteed to be no larger.
    axes, spacing, unit
        Stored in the file (axes default to "ZYX"/"TZYX").
    num_experts, top_k, expert_layers, w0, w0_first
        Architecture. ``num_experts=None``: 2 experts, or 1 where the budget would leave
        each of 2 narrower than 4 (:func:`~napari_moec.budget.size_model_auto_experts`).
        The width follows from the budget unless ``hidden_features`` is given,
        and the first layer's ω0 from the width unless ``w0_first`` is given
        (:func:`~napari_moec.budget.first_layer_w0`).
    train, quant
        Schedule and stored precision (:class:`TrainConfig`, :class:`QuantConfig`).
    device
        "auto" (CUDA if present), "cpu" or "cuda".
    preview_every
        Seconds of training between :class:`Preview` events; None for none.
    preview_voxels
        Upper bound on a preview's voxels (the stride is chosen to respect it).
    threads
        CPU threads for training (default: the cores this process may use). On a machine
        busy with other jobs, fewer threads can be much faster: every small op waits at a
        barrier for descheduled threads (docs/benchmarks.md).

    Examples
    --------
    >>> comp = Compressor(volume, ratio=256)              # doctest: +SKIP
    >>> for event in comp.run(): ...                       # doctest: +SKIP
    """

    def __init__(
        self,
        volume: np.ndarray,
        ratio: float = 256.0,
        *,
        axes: str | None = None,
        spacing=None,
        unit: str | None = None,
        num_experts: int | None = None,
        top_k: int = 1,
        expert_layers: int = 3,
        w0: float = 30.0,
        w0_first: float | None = None,
        hidden_features: int | None = None,
        train: TrainConfig | None = None,
        quant: QuantConfig | None = None,
        norm_range: tuple[float, float] = (-1.0, 1.0),
        device: str | torch.device | None = None,
        preview_every: float | None = None,
        preview_voxels: int = 1 << 16,
        threads: int | None = None,
    ) -> None:
        volume = check_volume(volume)
        self.volume = volume
        self.train_config = train or TrainConfig()
        quant = quant or QuantConfig()
        self.device = resolve_device(device)
        axes = axes or ("ZYX" if volume.ndim == 3 else "TZYX")
        if (
            len(axes) != volume.ndim
            or len(set(axes)) != volume.ndim
            or not set(axes) <= set("TCZYX")
        ):
            raise ConfigError(f"axes {axes!r} do not fit a {volume.ndim}D volume (letters TCZYX)")
        if spacing is not None:
            spacing = tuple(float(s) for s in spacing)
            if len(spacing) != volume.ndim or not all(math.isfinite(s) and s > 0 for s in spacing):
                raise ConfigError(f"spacing {spacing} must be {volume.ndim} positive numbers")
        self.normalization = Normalization.of(volume, *norm_range)
        self.original_nbytes = volume.nbytes
        self.budget = budget_nbytes(volume.nbytes, ratio)
        base = Header(
            shape=tuple(int(n) for n in volume.shape),
            axes=axes,
            dtype=volume.dtype.name,
            vmin=self.normalization.vmin,
            vmax=self.normalization.vmax,
            model=ModelConfig(
                in_features=volume.ndim,
                num_experts=DEFAULT_EXPERTS if num_experts is None else num_experts,
                top_k=top_k,
                expert_layers=expert_layers,
                w0=w0,
                w0_first=30.0 if w0_first is None else w0_first,
            ),
            quant=quant,
            norm=(float(norm_range[0]), float(norm_range[1])),
            spacing=spacing,
            unit=unit,
        )
        if hidden_features is None and num_experts is None:
            model = size_model_auto_experts(base, self.budget)
        elif hidden_features is None:
            model = size_model(base, self.budget)
        else:
            model = replace(
                base.model,
                hidden_features=hidden_features,
                gate_hidden=gate_width(hidden_features),
            )
        if w0_first is None:
            model = replace(model, w0_first=first_layer_w0(model.hidden_features))
        self.header = replace(base, model=model)
        summary = summary_for(self.header, self.budget)
        #: Whether the file will hold the training summary (not in the tightest budgets).
        self.stores_summary = bool(summary)
        self.predicted_nbytes = predict_nbytes(replace(self.header, train=summary))
        if quant.is_float and self.predicted_nbytes > self.budget:
            raise ConfigError(
                f"a width-{model.hidden_features} network needs {self.predicted_nbytes} bytes, "
                f"over the {self.budget}-byte budget"
            )
        self.num_parameters = count_parameters(model)
        self.preview_every = preview_every
        self.preview_voxels = preview_voxels
        if threads is None:
            threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
            threads = threads or os.cpu_count() or 1
        if not isinstance(threads, int) or threads < 1:
            raise ConfigError(f"threads must be a positive integer, got {threads!r}")
        self.threads = threads
        self._stop = threading.Event()
        #: The network being trained (None before ``run`` starts). Read it only between
        #: events, from the thread that drives ``run`` (e.g. to decode a plane for a preview).
        self.model: MoESiren | None = None

    @property
    def model_config(self) -> ModelConfig:
        return self.header.model

    def stop(self) -> None:
        """Ask :meth:`run` to end training at the next step and finish with the best model."""
        self._stop.set()

    # ------------------------------------------------------------------------------------
    def run(self) -> Generator[TrainEvent, None, Compressed]:
        """Train, then quantize and code. Yields events; returns the :class:`Compressed`."""
        device = self.device
        threads = torch.get_num_threads()
        if device.type == "cpu":
            # set_num_threads is per thread here: a worker thread starts with its own default.
            torch.set_num_threads(self.threads)
        try:
            model, steps, seconds, stopped = yield from self._train(device)
            yield Finalizing(step=steps, stopped=stopped)
            return self._finish(model, steps, seconds, stopped, device)
        finally:
            torch.set_num_threads(threads)
            if device.type == "cuda":
                torch.cuda.empty_cache()

    def _train(self, device: torch.device):
        cfg = self.train_config
        mcfg = self.header.model
        quant = self.header.quant
        shape = self.header.shape
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            model = MoESiren(mcfg).to(device)
        self.model = model
        gen = torch.Generator(device=device).manual_seed(cfg.seed)
        target = torch.from_numpy(self.normalization.apply(self.volume).reshape(-1)).to(device)
        n_voxels = target.numel()
        batch = min(cfg.batch_size, n_voxels)
        span = (self.header.norm[1] - self.header.norm[0]) ** 2
        # fused: one kernel per step instead of ~64 small ops (the CPU profile's advice).
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, fused=True)
        yield Started(
            cfg.steps,
            cfg.time_limit,
            self.num_parameters,
            self.predicted_nbytes,
            self.budget,
            str(device),
            mcfg,
        )

        step, active = 0, 0.0
        frozen = mcfg.num_experts == 1
        qat = False
        best_loss, best_state = math.inf, None
        ema = None
        acc_mse = torch.zeros((), device=device)
        acc_drop = torch.zeros((), device=device)
        acc_load = torch.zeros(mcfg.num_experts, device=device)
        acc_n = 0
        loss_value, psnr_value = math.nan, math.nan
        load_value = np.full(mcfg.num_experts, 1.0 / mcfg.num_experts)
        drop_value = 0.0
        next_preview = self.preview_every
        while not self._stop.is_set():
            progress = step / cfg.steps
            if cfg.time_limit:
                progress = max(progress, active / cfg.time_limit)
            if progress >= 1.0:
                break
            t0 = time.perf_counter()
            lr = cfg.lr * cfg.lr_final**progress
            for group in optimizer.param_groups:
                group["lr"] = lr
            if not frozen and progress >= cfg.freeze_router_at:
                for p in model.gate_parameters():
                    p.requires_grad_(False)
                    p.grad = None
                frozen = True
            if not qat and not quant.is_float and progress >= 1.0 - cfg.qat_fraction:
                qat = True
                best_loss, best_state, ema = math.inf, None, None

            index = torch.randint(n_voxels, (batch,), device=device, generator=gen)
            coords = flat_index_coords(index, shape)
            if qat:
                params = {
                    name: fake_quantize(p, quant.bits, quant.per_channel)
                    for name, p in model.named_parameters()
                }
                out = functional_call(model, params, (coords, cfg.capacity_factor))
            else:
                out = model(coords, cfg.capacity_factor)
            kept = out.kept.to(out.value.dtype)
            err = (out.value[:, 0].float() - target[index]) ** 2
            mse = (err * kept).sum() / kept.sum().clamp(min=1.0)
            loss = mse if frozen else mse + cfg.balance_weight * out.aux_loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            acc_mse += mse.detach()
            acc_drop += 1.0 - kept.mean().detach()
            acc_load += out.load.detach()
            acc_n += 1

            if step % cfg.report_every == 0 or step == cfg.steps:
                loss_value = float(acc_mse) / acc_n  # the one host sync per report
                if not math.isfinite(loss_value):
                    raise TrainingError(
                        f"loss became {loss_value} at step {step}; try a lower lr (now {cfg.lr:g})"
                    )
                psnr_value = 10 * math.log10(span / max(loss_value, 1e-30))
                load_value = (acc_load / acc_n).cpu().numpy()
                drop_value = float(acc_drop) / acc_n
                acc_mse.zero_(), acc_drop.zero_(), acc_load.zero_()
                acc_n = 0
                ema = loss_value if ema is None else 0.7 * ema + 0.3 * loss_value
                if ema < best_loss:
                    best_loss = ema
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            active += time.perf_counter() - t0
            eta = active / step * (cfg.steps - step)
            if cfg.time_limit:
                eta = min(eta, max(0.0, cfg.time_limit - active))
            phase = "qat" if qat else ("frozen" if frozen and mcfg.num_experts > 1 else "train")
            yield Progress(
                step,
                cfg.steps,
                loss_value,
                psnr_value,
                load_value,
                drop_value,
                lr,
                active,
                eta,
                phase,
            )
            if next_preview is not None and active >= next_preview:
                next_preview = active + self.preview_every
                yield self._preview(model, step, device)

        if best_state is not None:
            model.load_state_dict(best_state)
        return model, step, active, self._stop.is_set()

    def preview_stride(self) -> tuple[int, ...]:
        shape = self.header.shape
        spatial = shape[-3:]
        s = max(1, math.ceil((math.prod(shape) / self.preview_voxels) ** (1 / len(spatial))))
        return (1,) * (len(shape) - 3) + tuple(min(s, n) for n in spatial)

    def _preview(self, model: MoESiren, step: int, device) -> Preview:
        stride = self.preview_stride()
        values = evaluate(model, self.header.shape, None, stride, device=device)
        labels = evaluate(model, self.header.shape, None, stride, labels=True, device=device)
        image = self.normalization.invert(values, self.volume.dtype)
        return Preview(step, stride, image, labels)

    # ------------------------------------------------------------------------------------
    def _finish(self, model, steps, seconds, stopped, device) -> Compressed:
        """Quantize, code and measure the trained network; the returned file fits the budget.

        Rate control runs on the header *without* the training summary, against the budget
        minus a fixed reservation for it. So the quantization step, and with it the stored
        weights, never depend on the summary's contents (wall-clock seconds, PSNR): the same
        seed gives the same weights on every run. The summary, with the PSNR of exactly these
        weights, is then written into the reserved bytes (or left out in the rare case that it
        does not fit them).
        """
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        run = {"steps": steps, "seconds": seconds, "device": str(device), "stopped_early": stopped}
        reserve = summary_reserve(self.header) if self.stores_summary else 0
        data, step = self._fit_budget(self.header, state, self.budget - reserve)
        compressed = Compressed.from_bytes(data)
        decoded = compressed.decode(device=device)
        psnr_value = round(psnr(self.volume, decoded), 2)
        if self.stores_summary:
            train = {
                "device": device.type,
                "psnr": psnr_value,
                "seconds": round(seconds, 1),
                "steps": steps,
            }
            with_summary = pack(replace(self.header, train=train), state, step)
            if len(with_summary) <= self.budget:
                compressed = Compressed.from_bytes(with_summary)
        return self._report(compressed, decoded, psnr_value, step, run)

    def _report(self, compressed, decoded, psnr_value, step, run: dict):
        """Attach what the run measured (``Compressed.report``) and return ``compressed``."""
        spatial_ok = min(self.volume.shape[-3:]) >= 7
        compressed.report = {
            "budget_bytes": self.budget,
            "predicted_bytes": self.predicted_nbytes,
            "file_bytes": compressed.nbytes,
            "ratio": compressed.ratio,
            "parameters": self.num_parameters,
            "hidden_features": self.header.model.hidden_features,
            "w0_first": self.header.model.w0_first,
            "quant_step": step,
            "psnr": psnr_value,
            "psnr_dtype": psnr(self.volume, decoded, "dtype"),
            "ssim": ssim(self.volume, decoded) if spatial_ok else None,
            **run,
        }
        return compressed

    def _fit_budget(self, header: Header, state: dict, budget: int) -> tuple[bytes, float]:
        """The file at the finest quantization step within ``budget`` bytes (rate control).

        Float precisions have no step to choose: their size was exact when the network was
        sized, so they only have to fit the whole budget.
        """
        if header.quant.is_float:
            data = pack(header, state)
            if len(data) > self.budget:
                raise TrainingError(f"file of {len(data)} bytes exceeds the {self.budget} budget")
            return data, 1.0
        lo, hi = -4.0, 16.0  # log2 of the step multiplier
        data = pack(header, state, 2.0**lo)
        if len(data) <= budget:
            return data, 2.0**lo
        best = None
        for _ in range(22):
            mid = (lo + hi) / 2
            candidate = pack(header, state, 2.0**mid)
            if len(candidate) <= budget:
                hi, best = mid, candidate
            else:
                lo = mid
        if best is None:
            best = pack(header, state, 2.0**hi)
            if len(best) > budget:
                raise TrainingError(
                    f"even the coarsest quantization gives {len(best)} bytes > {budget}"
                )
        return best, 2.0**hi
