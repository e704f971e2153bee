"""Training a GridMoE to a byte budget: rate-distortion loss with online rate control.

Loss per step::

    MSE(volume, synth(features(latents')))  +  lam * 2 ln2 * D_ema * bits(latents + U) / N_latents
        +  balance_weight * balance_loss        (only with a router, until it freezes)

* latents' = latents + U(-.5,.5) for the first ``ste_at`` of the schedule, then round() with a
  straight-through gradient (Cool-chic's noise-then-STE);
* ``lam`` is adapted every step by dual ascent in log space toward a bit target:
  ``log lam += eta * e + kd * (e - e_prev)``, ``e = log(hard_bits / target)``, where hard_bits is the learned per-level model's
  cost of the rounded latents and target = 8 * (payload budget - MLP bytes - side bytes) * frac.
  The MLP bytes are re-measured at each checkpoint;
* the schedule runs on this thread's CPU time (``time.thread_time``), cosine lr decay;
* every ``checkpoint_every`` CPU seconds a real file is written (``coding.fit_budget``: MLP step
  choice + zeroing the smallest latents / coarser latent step so it fits exactly), decoded from its bytes, and its
  PSNR logged. Checkpoint time is measured separately and not counted as training time.

Volumes larger than ``max_voxels`` train on a random box per step (same interpolation rows as
random-access decoding); smaller ones on the whole volume every step.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, asdict

import numpy as np
import torch

from napari_moec.metrics import psnr as psnr_fn

from .coding import HEADER_RESERVE, fit_budget, load_model
from .decode import decode_region, invert
from .interp import interp_matrix
from .model import GridConfig, GridMoE, region_coords

__all__ = ["TrainSettings", "train"]


@dataclass
class TrainSettings:
    time_limit: float = 300.0        # CPU seconds of training
    lr_latent: float = 0.05
    lr_mlp: float = 0.005
    lr_floor: float = 0.02           # cosine decays to lr * lr_floor
    ste_at: float = 0.9
    balance_weight: float = 0.01
    freeze_router_at: float = 0.8
    rate_frac: float = 1.0
    lam0: float = 0.08
    lam_eta: float = 0.03
    lam_kd: float = 0.5              # derivative gain (damps the lag of the latents' response)
    checkpoint_every: float = 20.0
    max_voxels: int = 400_000
    seed: int = 0
    init_std: float = 0.0
    batch_points: int = 16384        # design (c) only
    capacity_factor: float = 1.25    # design (c) only


def _full_mats(cfg: GridConfig):
    return [[interp_matrix(n, g, cfg.kernel) for n, g in zip(cfg.shape, gs)]
            for gs in cfg.grid_shapes]


def train(volume: np.ndarray, cfg: GridConfig, budget: int, st: TrainSettings,
          log=print) -> dict:
    torch.manual_seed(st.seed)
    rng = np.random.default_rng(st.seed)
    vmin, vmax = float(volume.min()), float(volume.max())
    target = torch.from_numpy(
        ((volume.astype(np.float64) - vmin) / (vmax - vmin) * 2 - 1).astype(np.float32))
    n_vox = target.numel()
    model = GridMoE(cfg, st.init_std)
    mats_full = _full_mats(cfg)
    ident = [[None if (m.shape[0] == m.shape[1] and torch.equal(m, torch.eye(m.shape[0])))
              else m for m in lvl] for lvl in mats_full]
    use_coords = cfg.needs_coords
    siren = cfg.synth == "siren"
    coords_full = region_coords(cfg.shape).reshape(*cfg.shape, -1) if use_coords else None
    crop = n_vox > st.max_voxels
    if crop:
        spatial = [i for i, n in enumerate(cfg.shape) if n > 1]
        f = (st.max_voxels / n_vox) ** (1 / len(spatial))
        box = [max(1, min(n, round(n * f))) if i in spatial else n
               for i, n in enumerate(cfg.shape)]

    opt = torch.optim.Adam([
        {"params": list(model.grids.latents), "lr": st.lr_latent, "base": st.lr_latent},
        {"params": [model.grids.log_scale], "lr": st.lr_mlp * 2, "base": st.lr_mlp * 2},
        {"params": list(model.synth.parameters()), "lr": st.lr_mlp, "base": st.lr_mlp},
    ])
    n_mlp = model.mlp_count()
    n_tensors = len(list(model.synth.parameters()))
    side = 2 + 2 * n_tensors + cfg.num_levels + n_tensors + 2 + 4
    mlp_bytes = n_mlp * 7.0 / 8
    limit = budget - HEADER_RESERVE

    def bit_target():
        return max(64.0, 8 * (limit - mlp_bytes - side) * st.rate_frac)

    # Initial lam from the bits per latent the budget allows (measured: lam ~0.08 at 1.5
    # bits/latent, ~0.8 at 0.3), then dual ascent; faster adaptation in the first 10%.
    bpl = bit_target() / model.latent_count()
    lam = min(10.0, st.lam0 * (1.5 / max(bpl, 0.02)) ** 1.45)
    err_prev = None
    d_ema = None
    n_lat = model.latent_count()
    t_train, step, next_ckpt = 0.0, 0, st.checkpoint_every
    curve, lam_trace = [], []
    frozen = cfg.num_experts == 1
    wall0 = time.perf_counter()
    t_eval_total = 0.0
    dtype = volume.dtype.name

    def evaluate(data: bytes) -> float:
        m, meta = load_model(data)
        dec = invert(decode_region(m), meta["dtype"], meta["vmin"], meta["vmax"])
        return psnr_fn(volume, dec)

    def checkpoint(final=False):
        nonlocal mlp_bytes, t_eval_total
        t0 = time.thread_time()
        # SIREN weights (design c) need finer steps than nominal int8, as in the product.
        steps = (0.25, 0.5, 1.0, 1.5, 2.0, 3.0) if siren else (1.0, 1.5, 2.0, 3.0)
        p, data, info = fit_budget(model, budget, dtype, vmin, vmax, evaluate, steps)
        mlp_bytes = info["mlp_bits"] / 8
        dt = time.thread_time() - t0
        t_eval_total += dt
        rec = {"cpu_s": round(t_train, 1), "step": step, "psnr": round(p, 3),
               "bytes": len(data), "payload": info["file"] - info["header"],
               "latent_B": round(info["latent_bits"] / 8), "mlp_B": round(info["mlp_bits"] / 8),
               "mlp_step": info["mlp_step"], "zero_k": info["zero_k"],
               "lat_step": info["lat_step"], "nnz": info["nonzero_latents"],
               "lam": lam, "fit_cpu_s": round(dt, 2)}
        curve.append(rec)
        log(rec)
        return data

    while t_train < st.time_limit:
        t0 = time.thread_time()
        progress = t_train / st.time_limit
        cos = 0.5 * (1 + math.cos(math.pi * progress))
        for g in opt.param_groups:
            g["lr"] = g["base"] * (st.lr_floor + (1 - st.lr_floor) * cos)
        if not frozen and progress >= st.freeze_router_at:
            for p in model.synth.gate.parameters():
                p.requires_grad_(False)
            frozen = True
        if crop:
            starts = [int(rng.integers(0, n - b + 1)) for n, b in zip(cfg.shape, box)]
            mats = [[m[s:s + b] for m, s, b in zip(lvl, starts, box)] for lvl in mats_full]
            sl = tuple(slice(s, s + b) for s, b in zip(starts, box))
            tgt = target[sl].reshape(-1)
            xyz = coords_full[sl].reshape(-1, len(cfg.shape)) if use_coords else None
        else:
            mats, tgt = ident, target.reshape(-1)
            xyz = coords_full.reshape(-1, len(cfg.shape)) if use_coords else None
        noisy = [y + torch.rand_like(y) - 0.5 for y in model.grids.latents]
        if progress < st.ste_at:
            syn = noisy
        else:
            syn = [y + (torch.round(y) - y).detach() for y in model.grids.latents]
        f = model.grids.features(syn, mats)
        if siren:  # design (c): random points (batch_points) as the product trains SIRENs
            idx = torch.randint(f.shape[0], (st.batch_points,))
            f, xyz, tgt = f[idx], xyz[idx], tgt[idx]
            value, aux, load, _ = model.synth(f, xyz, frozen, st.capacity_factor)
        else:
            value, aux, load, _ = model.synth(f, xyz, route_frozen=frozen)
        mse = torch.mean((value - tgt) ** 2)
        ctx = model.grids.contexts()
        rate = model.grids.rate_bits(noisy, ctx)
        # lam is relative: the rate weight is lam * 2 ln2 * D / N_latents (high-rate theory's
        # slope dD/dR), so one lam (~0.08 measured) fits every volume and training stage.
        d_ref = float(mse.detach()) if d_ema is None else d_ema
        d_ema = d_ref if d_ema is None else 0.9 * d_ema + 0.1 * float(mse.detach())
        loss = mse + lam * 2 * math.log(2) * d_ref * rate / n_lat
        if not frozen:
            loss = loss + st.balance_weight * aux
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        hb = model.grids.hard_bits(model.grids.contexts())
        # clamped: the first steps (rate ~0 -> target) must not wind the controller up
        err = min(0.5, max(-0.5, math.log(max(hb, 1.0) / bit_target())))
        d_err = 0.0 if err_prev is None else err - err_prev
        err_prev = err
        eta = st.lam_eta
        lam *= math.exp(eta * err + st.lam_kd * d_err)
        lam = min(max(lam, 1e-4), 100.0)
        t_train += time.thread_time() - t0
        if step % 25 == 0:
            lam_trace.append((round(t_train, 1), step, float(mse.detach()), hb / 8, bit_target() / 8, lam,
                              [round(float(x), 3) for x in load]))
        if t_train >= next_ckpt or t_train >= st.time_limit:
            next_ckpt += st.checkpoint_every
            data = checkpoint()
    m, _ = load_model(data)
    labels = decode_region(m, labels=True)
    counts = np.bincount(labels.ravel(), minlength=cfg.num_experts)
    return {"curve": curve, "lam_trace": lam_trace, "steps": step, "train_cpu_s": t_train,
            "ms_per_step": 1000 * t_train / max(step, 1), "eval_cpu_s": t_eval_total,
            "wall_s": time.perf_counter() - wall0, "file": data,
            "label_fractions": (counts / counts.sum()).round(3).tolist(),
            "n_latents": model.latent_count(), "n_mlp": n_mlp, "settings": asdict(st),
            "config": cfg.to_dict()}
