"""Training a grid model to a byte budget: rate-distortion loss, online rate control, real
files at checkpoints, the best one kept.

Keeping the best. Every ``checkpoint_every`` steps :meth:`GridTrainer.checkpoint` packs the
current weights into a real payload within the budget (:func:`.fit.fit_checkpoint`; when the
rate control landed under the budget it is the plain rounding the rate calibration packed
at the same step, so no pack of its own) and scores it on a fixed strided sample of the
volume (at most ``CHECKPOINT_VOXELS`` voxels, decoded from the bytes as a reader decodes
them); the best by that score is ``GridModel.best_payload``. The end of the run
(:meth:`GridTrainer.final`, or the store through ``GridFamily.fit_payload``) fits the last
weights exactly to the budget and keeps whichever file is better, that fit or the best
checkpoint, by one measure: the MSE of the decoded bytes over the whole volume. Before,
the shared loop chose between the last weights and its best-training-loss snapshot by the
*float* model on a sample (``schedule.keep_better``): the float latents are not what a grid
file decodes (it rounds them, quantizes the network and zeroes latents to fit), so that
choice could keep the worse file (ct_head 1024x, 4000 steps: it kept 26.09 dB where the last
weights stored 26.26 dB). A checkpoint used to run the whole budget search and decode every
candidate in full (about 4 to 8 whole-volume decodes and 30 packs; 7 s on a 256³ volume on a
GPU); now it is usually one decode of the sample and no pack, a few of each when the rate
control overshot the budget (``benchmarks/grid_checkpoints.py`` counts both).

Schedule in **steps**. ``progress = step / steps``, or with a wall-clock ``time_limit``
``max(step / steps, elapsed / time_limit)``: the cosine learning-rate decay, the switch from
noise to straight-through rounding (``ste_at``) and the router freeze follow ``progress``, so a
time limit *compresses* the whole schedule instead of cutting it in its high-lr phase, and a run
without one is reproducible on any machine and device. The prototype followed the training
thread's CPU time (``time.thread_time``): on a GPU that clock barely moves, and on a loaded CPU
it made results depend on the machine's load. Wall time is what a user waits for.

Sampling. Volumes of at most ``max_voxels`` train on every voxel each step. Larger ones train,
by default, on a **strided subset**: per axis one random index in each cell of ``stride``
voxels, re-drawn every step, so every latent gets a gradient at every step and each voxel is
drawn once per ``prod(strides)`` steps on average. The prototype's random box
(``sampling="box"``) updated only the latents under the box (~9% of them on the macaque),
which grew too slowly: the macaque 256x file filled 31 kB of its 69 kB budget (REPORT.md 9).
Measured here at 1500 steps on a GPU (``benchmarks/grid_fill.py macaque 256``, one seed each):
box 42.32 dB at 97% of the budget, strides 41.48 dB at 62% before the rate calibration
(:meth:`GridTrainer.calibrate`), strides + calibration 42.21 dB at 98%: the strides fill the
budget only with the calibration, and neither sampler beat the other in PSNR at equal steps.

How many voxels a step sees (``max_voxels``) is a speed trade, measured at equal CPU time (one
thread, ``benchmarks/grid_batch.py``): on a CPU, 32,768 voxels a step (4x as many steps) beat
every voxel a step by +1.0 dB on hipct 256x (31.40 against 30.41 dB in 80 CPU-s) and 50,000 by
+2.1 dB on ct_head 256x (29.79 against 27.69 in 103-125 CPU-s): the latents and the small MLP
learn from many noisy steps faster than from few exact ones, as SIREN training does from its
16k-point batches. A GPU runs 400,000 voxels a step in about the time of a small subset (its
step time is launch-bound), so it keeps the large one.

Loss: ``MSE + rate weight * bits(latents + U) + balance_weight * balance`` (see :mod:`.rate`).

Decoded box (``decoded``: a tile inside its region). A tile trains on its voxels and a margin
around them, but a reader decodes only the tile, so checkpoints and the final choice are
judged on the box alone (the margin's errors weighed in every choice before). On the whole
macaque as four 128³ tiles at 256x, 1500 steps a tile, decoded: 40.74 dB in 63.8 kB against
40.74 in 66.9 kB (the same training; two tiles kept an earlier, smaller checkpoint that decodes
the tile as well).
The latents no voxel of the tile reads (14 % of a 128³ tile's payload at 256x,
``benchmarks/tile_margin_latents.py``; ``LatentGrids.stored`` holds, per level, the box of
nodes the tile reads, :func:`.interp.support_box`) train as every latent does, rate term
included, so the shared network sees one kind of latent on the margin and in the tile; but
they are not counted against the budget (the controller's bits and its start are the stored
latents') and a payload stores them as 0 (:func:`.fit.quantize_latents`), so the budget buys
the tile's own latents. The whole macaque at 256x, four tiles, 140 s a tile on 2 workers:
46.26 / 45.79 dB (seeds 0 / 1) against 45.88 / 45.34 storing them (docs/tiled.md). Two
earlier tries lost: held at 0 while training (40.08 against 40.74 dB at 1,500 steps a tile:
the margin then fits with the coarse levels alone), and trained free of the rate term, then
zeroed (37.68 dB; session 13 read it as margin latents unlike the tile's pulling the shared
network).

Quality target (``target_mse``, from ``--psnr``): the controller steers lam toward that MSE
instead of the budget's bits (``limit`` is then only a ceiling that sized the grids). The
distortion it follows is an EMA of the rounded-latent model's MSE: the training MSE in the
straight-through phase, a no-grad forward with rounded latents every ``probe_every`` steps in
the noise phase (the noisy-latent MSE is not what a file decodes to).
"""

from __future__ import annotations

import math
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import torch

from ...errors import TrainingError
from ...sampling import lattice_sample
from .config import GridConfig
from .decode import decode_region, model_from_payload, region_coords
from .fit import (
    FitResult,
    fit_budget,
    fit_checkpoint,
    network_steps_for,
    pack_model,
    quantize_weights,
)
from .interp import axis_matrices, support_box
from .model import GridModel, LatentContext
from .noise import LatentNoise
from .payload import pack_payload, unpack_payload
from .rate import RateController, start_lambda
from .sampling import box_rows, stride_rows

__all__ = ["CHECKPOINT_VOXELS", "GridStep", "GridTrainer", "StepTensors", "TrainSettings"]

#: Voxels a training step sees by default (module docstring, "Sampling"): on a CPU many cheap
#: steps on strided subsets beat fewer steps on every voxel; an accelerator runs the larger
#: subset in about the same time as the small one.
CPU_MAX_VOXELS = 32_768
ACCELERATOR_MAX_VOXELS = 400_000
#: Voxels a checkpoint's payload is decoded and scored on (module docstring, "Keeping the
#: best"): a fixed strided sub-grid, the same at every checkpoint of a run.
CHECKPOINT_VOXELS = 1 << 16


@dataclass(frozen=True)
class TrainSettings:
    steps: int = 2000
    time_limit: float | None = None  # wall seconds; compresses the schedule (module docstring)
    lr_latent: float = 0.05
    lr_network: float = 0.005
    lr_floor: float = 0.02  # the cosine decays to lr * lr_floor
    ste_at: float = 0.9
    balance_weight: float = 0.01
    freeze_router_at: float = 0.8
    # progress by which the router's balanced start has faded out (Synthesis.fade_cones;
    # 0.1, 0.25, 0.5 measured at 2000 steps: 0.25 won 17 of 18 cases); 0: the cones stay
    cone_fade: float = 0.25
    # progress until which a routed model trains expert 0 alone on every voxel, its copies
    # kept in the other experts, then routes from there (sparse upcycling); 0: routed from
    # the start. The cones fade over ``cone_fade`` after it. Not the default: 0.3 measured
    # (4 experts top-2, 5 minutes, 2 threads) ct_head 256x +0.21 dB, hipct 64x +0.00, at
    # 16,000 steps +0.09 / -0.04 (notes.md, session 25): one cell's gain, unmeasured elsewhere.
    dense_until: float = 0.0
    # steps; a real payload is packed and scored on a sample. A multiple of calibrate_every:
    # the checkpoint then reuses the calibration's pack of the same weights.
    checkpoint_every: int = 200
    calibrate_every: int = 100  # steps; the rate proxy is compared with the real coder
    # voxels a step trains on (a strided subset of larger volumes); None: 32,768 on a CPU,
    # 400,000 on an accelerator (module docstring, "Sampling")
    max_voxels: int | None = None
    sampling: Literal["stride", "box"] = "stride"
    lam0: float = 0.08
    lam_eta: float = 0.03
    lam_kd: float = 0.5
    lam_free_after: float = 0.2
    probe_every: int = 4  # steps; the rounded-latent MSE under a quality target
    # steps between rate-controller updates (each computes the rounded latents' bits and
    # reads them back to the host) and refreshes of the latents' context slots; None: every
    # 4 steps on a CPU, every 8 on an accelerator (see GridTrainer.advance)
    control_every: int | None = None
    quality_eta_gain: float = 2.0  # the controller's step under a quality target, x lam_eta


@dataclass(frozen=True)
class GridStep:
    """One optimiser step done (numbers only, CPU side)."""

    step: int
    progress: float
    mse: float  # of the training batch, in the [-1, 1] range
    bits: float  # rounded latents under the learned rate model
    target_bits: float
    lam: float
    load: np.ndarray  # top-1 share of each expert
    phase: str  # "noise" | "ste"


@dataclass(frozen=True)
class StepTensors:
    """One optimiser step done, its numbers left on the training device (no host sync)."""

    step: int
    progress: float
    mse: torch.Tensor  # 0-d, of the training batch, in the [-1, 1] range
    load: torch.Tensor  # (n,) top-1 share of each expert
    phase: str  # "noise" | "ste"


class GridTrainer:
    """Trains a :class:`GridModel` on ``target`` (normalised float32 volume) for a payload of
    at most ``limit`` bytes. Drive it with :meth:`step`/:meth:`checkpoint` or :meth:`run`."""

    def __init__(
        self,
        target: np.ndarray,
        cfg: GridConfig,
        limit: int,
        settings: TrainSettings | None = None,
        *,
        device="cpu",
        seed: int = 0,
        model: GridModel | None = None,
        generator: torch.Generator | None = None,
        target_mse: float | None = None,
        decoded: Sequence[tuple[int, int]] | None = None,
    ) -> None:
        if target_mse is not None and not (math.isfinite(target_mse) and target_mse > 0):
            raise TrainingError(f"target MSE must be a positive number, got {target_mse!r}")
        self.target_mse = target_mse
        self._d_hat: float | None = None  # EMA of the rounded-latent MSE (quality target)
        if tuple(target.shape) != cfg.shape:
            raise TrainingError(f"volume {target.shape} does not match the config's {cfg.shape}")
        self.cfg, self.limit = cfg, int(limit)
        #: (start, stop) per axis of the voxels a reader decodes (module docstring).
        self.box = _decoded_box(decoded, cfg.shape)
        self.st = settings or TrainSettings()
        self.device = torch.device(device)
        if generator is None:
            generator = torch.Generator(device=self.device).manual_seed(seed)
        if model is None:
            model = GridModel(cfg, generator=torch.Generator().manual_seed(seed))
        self.model = model.to(self.device)
        self.gen = generator
        if isinstance(target, torch.Tensor):
            self.target = target.detach().to(self.device, torch.float32)
        else:
            self.target = torch.from_numpy(np.asarray(target, np.float32)).to(self.device)
        self.target_np = self.target.cpu().numpy()
        self.full = axis_matrices(cfg.shape, cfg.grid_shapes, cfg.kernel, None, self.device)
        # Every axis's selector of the whole axis, the identity's as its node indices: a
        # strided batch takes its rows (interp.Selector).
        self.whole = [
            [
                torch.arange(n, device=self.device) if m is None else m
                for m, n in zip(lvl, cfg.shape, strict=True)
            ]
            for lvl in self.full
        ]
        self.n_lat = cfg.latent_count
        volume_box = tuple((0, n) for n in cfg.shape)
        self.model.grids.stored = (  # a tile stores the latents its voxels read (docstring)
            None
            if self.box == volume_box
            else [support_box(cfg.shape, g, cfg.kernel, self.box) for g in cfg.grid_shapes]
        )
        self.step_count, self.t0 = 0, time.perf_counter()
        self._faded = 0.0  # how much of the router's balanced start is faded out
        self.best: FitResult | None = None  # the best checkpoint (score: on the sample)
        self.history: list[dict] = []
        #: the network steps its payloads are fitted at, finest first (.fit.network_steps_for):
        #: the controller aims the latents at the budget left by the finest
        self.network_steps = network_steps_for(cfg, self.limit)
        self._overhead = _overhead_bytes(self.model, self.network_steps[0])
        self._sample: tuple[list, list, np.ndarray] | None = None  # see sample()
        self._plain: tuple[int, bytes] | None = None  # (step, plain pack) of the calibration
        self.calibration = 1.0  # rate-proxy bits per real coded latent bit (see calibrate)
        # whether calibrate() has measured that ratio: until then the proxy's bits cannot
        # tell the controller that the budget was reached (RateController.update)
        self.calibrated = False
        # Under a quality target the budget is only a ceiling: its bits per latent say
        # nothing of the operating point, so lam starts at lam0 and moves faster.
        quality = target_mse is not None
        self.rate = RateController(
            self.st.lam0
            if quality
            else start_lambda(self.target_bits() / self.model.grids.stored_count(), self.st.lam0),
            self.st.lam_eta * (self.st.quality_eta_gain if quality else 1.0),
            self.st.lam_kd,
            self.st.lam_free_after,
        )
        self._d_ema: torch.Tensor | None = None  # running MSE of the batches (on the device)
        self.last_bits = 0.0  # rate proxy's bits of the rounded latents, last time read back
        self.max_voxels = self.st.max_voxels or (
            CPU_MAX_VOXELS if self.device.type == "cpu" else ACCELERATOR_MAX_VOXELS
        )
        every = self.st.control_every
        self._control_every = max(1, every or (4 if self.device.type == "cpu" else 8))
        self._context: LatentContext | None = None  # the context slots, refreshed by advance()
        self._noise = LatentNoise(cfg.grid_shapes, self.gen, self.device)  # see .noise
        self.opt = torch.optim.Adam(
            [
                {
                    "params": list(self.model.grids.latents),
                    "lr": self.st.lr_latent,
                    "base": self.st.lr_latent,
                },
                {
                    "params": self.model.grids.rate_parameters(),
                    "lr": 2 * self.st.lr_network,
                    "base": 2 * self.st.lr_network,
                },
                {
                    "params": list(self.model.synth.parameters()),
                    "lr": self.st.lr_network,
                    "base": self.st.lr_network,
                },
            ],
            # One kernel for every parameter instead of the default (foreach) update's ~10
            # passes over every latent: a 661,775-latent Adam update alone 0.5 against 8-12 ms
            # on a loaded 2-core host; a whole idle macaque step moved within its noise.
            fused=self.device.type in ("cpu", "cuda"),
        )

    # -- schedule ---------------------------------------------------------------------------
    @property
    def progress(self) -> float:
        p = self.step_count / max(self.st.steps, 1)
        if self.st.time_limit:
            p = max(p, (time.perf_counter() - self.t0) / self.st.time_limit)
        return min(p, 1.0)

    @property
    def done(self) -> bool:
        return self.progress >= 1.0

    def target_bits(self) -> float:
        """Bits the latents may spend: the budget minus the payload's side and network bytes."""
        return max(64.0, 8.0 * (self.limit - self._overhead))

    # -- one step ---------------------------------------------------------------------------
    def _batch(self):
        """(interpolation matrices, coordinates or None, targets) of this step's voxels."""
        cfg, st = self.cfg, self.st
        if self.target.numel() <= self.max_voxels:
            coords = (
                region_coords(cfg.shape, tuple((0, n, 1) for n in cfg.shape), self.device)
                if self.model.needs_coords
                else None
            )
            return self.full, coords, self.target.reshape(-1)
        rows = (
            stride_rows(cfg.shape, self.max_voxels, self.gen)
            if st.sampling == "stride"
            else box_rows(cfg.shape, self.max_voxels, self.gen)
        )
        index = rows
        mats = [
            [m.index_select(0, i) for m, i in zip(lvl, index, strict=True)] for lvl in self.whole
        ]
        tgt = self.target
        for axis, i in enumerate(index):
            tgt = tgt.index_select(axis, i)
        coords = None
        if self.model.needs_coords:
            axes = [
                i.float() * (2.0 / (n - 1)) - 1.0 if n > 1 else i.float() * 0
                for i, n in zip(index, cfg.shape, strict=True)
            ]
            coords = torch.stack(
                [g.reshape(-1) for g in torch.meshgrid(*axes, indexing="ij")], dim=1
            )
        return mats, coords, tgt.reshape(-1)

    def step(self, progress: float | None = None, lr_scale: float = 1.0) -> GridStep:
        """One optimiser step (:meth:`advance`) with its numbers read back to the host."""
        return self.read_back(self.advance(progress, lr_scale))

    def read_back(self, out: StepTensors) -> GridStep:
        """``out`` (the step just taken) with the rate controller's numbers, on the host: for
        :meth:`step`, and for a caller that drives :meth:`run` and reads a step now and then."""
        return GridStep(
            out.step,
            out.progress,
            float(out.mse),
            self.last_bits,
            self.target_bits() * self.calibration,
            self.rate.lam,
            out.load.detach().cpu().numpy(),
            out.phase,
        )

    def advance(self, progress: float | None = None, lr_scale: float = 1.0) -> StepTensors:
        """One optimiser step at ``progress`` (default: this trainer's own, module
        docstring); every learning rate is multiplied by ``lr_scale`` (a guard's back-off).

        Host syncs. A GPU runs ahead of the Python thread only while nothing reads a value
        back; the first GPU lease measured 164 ms a step on a 256³ volume (docs/benchmarks/
        gpu.md), with the rate controller reading the MSE, the latents' bits and the expert
        load back every step. Here the MSE's running mean stays a device tensor and the
        controller reads the bits every ``control_every`` steps (every 8 on an accelerator,
        with the ascent's step scaled to match), and the returned numbers stay on the device:
        a caller reads them when it reports. A quality target still reads the MSE every step
        (its controller follows it).

        The rate proxy's work. The rate term covers every latent at every step, which on a
        CPU made it about half of a step on volumes of a few million voxels (a 128³ tile
        profiled with py-spy: its forward for the loss, again for the controller's bits, and
        the context slots, each over every latent). The proxy is fused
        (:func:`.rate.slot_laplace_bits`); the controller's bits and the context slots
        (which change only when a rounded neighbour does) are computed every
        ``control_every`` steps, 4 on a CPU.
        """
        st, grids = self.st, self.model.grids
        progress = self.progress if progress is None else progress
        cos = 0.5 * (1 + math.cos(math.pi * progress))
        for g in self.opt.param_groups:
            g["lr"] = g["base"] * (st.lr_floor + (1 - st.lr_floor) * cos) * lr_scale
        frozen = progress >= st.freeze_router_at
        mats, coords, tgt = self._batch()
        noisy = [y + u for y, u in zip(grids.latents, self._noise.draw(), strict=True)]
        phase = "noise" if progress < st.ste_at else "ste"
        synth_in = noisy if phase == "noise" else grids.quantized("ste")
        dense = progress < st.dense_until and self.cfg.num_experts > 1
        value, aux, load, _ = self.model.synth(
            grids.features(synth_in, mats), coords, frozen, dense
        )
        mse = torch.mean((value - tgt) ** 2)
        if self._context is None or self.step_count % self._control_every == 0:
            self._context = grids.context()
        context = self._context
        rate = grids.bits(noisy, context)
        mse_d = mse.detach()
        d_ref = mse_d if self._d_ema is None else self._d_ema
        self._d_ema = 0.9 * d_ref + 0.1 * mse_d
        loss = mse + self.rate.weight(d_ref, self.n_lat) * rate
        if self.cfg.num_experts > 1 and not frozen and not dense:
            loss = loss + st.balance_weight * aux
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.step_count += 1
        if dense:
            self._copy_first_expert()
        elif st.cone_fade > 0 and self._faded < 1.0:
            faded = min(max(progress - st.dense_until, 0.0) / st.cone_fade, 1.0)
            self.model.synth.fade_cones(faded - self._faded)
            self._faded = faded
        every = self._control_every
        calibrate = self.target_mse is None and self.step_count % st.calibrate_every == 0
        if self.target_mse is not None or calibrate or self.step_count % every == 0:
            mse_f = float(mse_d)
            if not math.isfinite(mse_f):
                raise TrainingError(f"the loss became {mse_f} at step {self.step_count}")
            with torch.no_grad():
                rounded = [torch.round(y) for y in grids.latents]
                self.last_bits = float(grids.bits(rounded, context, stored=True))
            if self.target_mse is not None:
                self._steer_quality(phase, mse_f, mats, coords, tgt, progress)
            else:
                if calibrate:
                    self.calibrate(self.last_bits)
                if self.step_count % every == 0:
                    self.rate.update(
                        self.last_bits,
                        self.target_bits() * self.calibration,
                        progress,
                        every,
                        trusted=self.calibrated,
                    )
        return StepTensors(self.step_count, progress, mse_d, load.detach(), phase)

    def _copy_first_expert(self) -> None:
        """Expert 0's weights and Adam moments copied into every other expert, so the model
        is at every step of the dense start the routed model it will continue as (a
        checkpoint packs it, a stop keeps it)."""
        self.model.synth.copy_first_expert()
        for layer in self.model.synth.experts:
            for p in (layer.weight, layer.bias):
                for moment in ("exp_avg", "exp_avg_sq"):
                    state = self.opt.state.get(p, {}).get(moment)
                    if state is not None:
                        state[1:] = state[0]

    def _steer_quality(self, phase, mse_f, mats, coords, tgt, progress) -> float:
        """One controller step toward ``target_mse`` (module docstring)."""
        d = None
        if phase == "ste":
            d = mse_f
        elif self._d_hat is None or self.step_count % self.st.probe_every == 0:
            with torch.no_grad():
                grids = self.model.grids
                rounded = [torch.round(y) for y in grids.latents]
                value, _, _, _ = self.model.synth(grids.features(rounded, mats), coords, True)
                d = float(torch.mean((value - tgt) ** 2))
        if d is not None:
            self._d_hat = d if self._d_hat is None else 0.8 * self._d_hat + 0.2 * d
        assert self.target_mse is not None and self._d_hat is not None
        return self.rate.update_distortion(self._d_hat, self.target_mse, progress)

    # -- files ------------------------------------------------------------------------------
    def score(self, payload: bytes) -> float:
        """Minus the MSE (training range) of a payload decoded from its bytes, over the whole
        volume (the decoded box): the measure of the final choice (module docstring,
        "Keeping the best")."""
        model = model_from_payload(unpack_payload(payload, self.cfg), self.device)
        values, _ = decode_region(model, list(self.box))
        target = self.target_np[tuple(slice(a, b) for a, b in self.box)]
        return -float(np.mean((values.astype(np.float64) - target) ** 2))

    def sample(self) -> tuple[list, list, np.ndarray]:
        """``(roi, stride, targets)`` of the checkpoints' fixed sample: the regular sub-grid
        of at most ``CHECKPOINT_VOXELS`` voxels of :func:`~napari_moec.sampling.lattice_sample`.
        Made once; it draws nothing from the training generator."""
        if self._sample is None:
            roi, strides = lattice_sample(self.cfg.shape, CHECKPOINT_VOXELS, self.box)
            cut = tuple(slice(a, n, s) for (a, n), s in zip(roi, strides, strict=True))
            self._sample = (roi, strides, self.target_np[cut].astype(np.float64))
        return self._sample

    def score_sample(self, payload: bytes) -> float:
        """Minus the MSE (training range) of a payload decoded from its bytes on the fixed
        sample (:meth:`sample`): a checkpoint's score."""
        roi, stride, targets = self.sample()
        model = model_from_payload(unpack_payload(payload, self.cfg), self.device)
        values, _ = decode_region(model, roi, stride)
        return -float(np.mean((values.astype(np.float64) - targets) ** 2))

    def calibrate(self, proxy_bits: float) -> None:
        """Aim the controller at the real coder: ``calibration`` = the rate proxy's bits of
        the rounded latents over the bits they really take in a payload (plain packing).

        The proxy's learned Laplace scales move slowly (their gradient is the small rate
        term), so on large volumes the proxy overstated the bits by up to 2x: the controller
        then held lam high while the real payload used 62% of the budget (macaque 256x,
        strided sampling, 1500 steps on a GPU). Measured every ``calibrate_every`` steps
        with one plain pack (no decoding); clamped to [0.25, 4].
        """
        packed = pack_model(self.model, self.network_steps[0])
        self._plain = (self.step_count, packed)  # this step's checkpoint may reuse it
        plain = len(packed)
        real_bits = 8.0 * max(plain - self._overhead, 1)
        if real_bits < 0.1 * self.target_bits():  # near-zero latents code in ~0 real bits:
            self.calibration = 1.0  # the ratio says nothing about the budget's operating point
            return
        self.calibration = min(4.0, max(0.25, proxy_bits / real_bits))
        self.calibrated = True

    def checkpoint(self, *, exact: bool = False) -> FitResult:
        """Pack the current weights into a real payload within the budget (the best of a few
        network steps by the sample's score; ``exact``: the whole search of
        :func:`.fit.fit_budget`, still scored on the sample), keep it (``best``,
        ``GridModel.best_payload``) if it is the best checkpoint so far (module docstring,
        "Keeping the best"). Reads the weights only: a run's training does not depend on
        when it checkpoints."""
        if exact:
            result = fit_budget(self.model, self.limit, self.score_sample, self.network_steps)
        else:
            # The calibration packed these very weights at this step (the optimiser has not
            # moved since): its bytes are the plain rounding a checkpoint starts from.
            fresh = self._plain is not None and self._plain[0] == self.step_count
            plain = self._plain[1] if fresh else None
            result = fit_checkpoint(
                self.model, self.limit, self.score_sample, self.network_steps, plain=plain
            )
        if self.best is None or result.score > self.best.score:
            self.best = result
            self.model.best_payload = result.payload  # a candidate of the final choice
            self.model.best_network_step = result.network_step
        self._record(result, "sample")
        return result

    def final(self) -> FitResult:
        """The file this run keeps: the exact budget fit of the current weights or the best
        checkpoint, whichever decodes better over the whole volume (``score``)."""
        result = fit_budget(self.model, self.limit, self.score, self.network_steps)
        if self.best is not None:
            saved = self.score(self.best.payload)
            if saved > result.score:
                result = replace(self.best, score=saved)
        self._record(result, "volume")
        return result

    def _record(self, result: FitResult, measure: str) -> None:
        self.history.append(
            {
                "step": self.step_count,
                "mse": -result.score,
                "measure": measure,  # "sample" (a checkpoint) or "volume" (the final choice)
                "bytes": len(result.payload),
                "network_step": result.network_step,
                "latent_step": result.latent_step,
                "zeroed": result.zeroed,
                "calibration": round(self.calibration, 3),
                "lam": self.rate.lam,
            }
        )

    def run(self) -> Generator[StepTensors, None, FitResult]:
        """Steps until the schedule ends, a checkpoint every ``checkpoint_every`` steps;
        returns :meth:`final`'s choice."""
        while not self.done:
            event = self.advance()
            yield event
            if self.step_count % self.st.checkpoint_every == 0 and not self.done:
                self.checkpoint()
        return self.final()


def _decoded_box(
    box: Sequence[tuple[int, int]] | None, shape: tuple[int, ...]
) -> tuple[tuple[int, int], ...]:
    """``box`` as (start, stop) pairs inside ``shape`` (None: the whole volume)."""
    if box is None:
        return tuple((0, n) for n in shape)
    box = tuple((int(a), int(b)) for a, b in box)
    if len(box) != len(shape) or any(
        not 0 <= a < b <= n for (a, b), n in zip(box, shape, strict=False)
    ):
        raise TrainingError(f"decoded box {box} is not a non-empty box inside {shape}")
    return box


def _overhead_bytes(model: GridModel, network_step: float) -> int:
    """Payload bytes besides the latents' stream: side bytes and the coded network."""
    weights, scales = quantize_weights(model, network_step)
    zeros = [np.zeros(g, np.int32) for g in model.cfg.grid_shapes]
    return len(pack_payload(model.cfg, zeros, weights, scales))
