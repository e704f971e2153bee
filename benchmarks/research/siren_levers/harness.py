"""Harness: one training configuration -> a curve of (cpu_s, wall_s, steps, file bytes, file PSNR).

Usage: python harness.py NAME VOLUME RATIO [key=value ...]   (writes results/NAME.json)

The loop is ``napari_moec.training.Compressor._train`` with switchable levers (see levers.py).
Sizing (width, router width, w0_first, budget, summary reserve) comes from the frozen
``Compressor``; every checkpoint packs the *current* weights with the frozen rate controller
(``Compressor._fit_budget`` against budget - summary reserve, exactly as ``_finish``), decodes
the file's bytes with ``Compressed.from_bytes(...).decode()`` and measures PSNR over the
original's data range. Checkpoint evaluation is outside the timed regions.

Time: ``time.thread_time()`` (CPU seconds of this thread; torch uses 1 thread) and
``time.perf_counter()`` around each training step. The schedule's progress is
max(step / steps, cpu_s / time_limit) (CPU time, not wall: robust to the shared machine).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time

import numpy as np
import tifffile
import torch
from torch.func import functional_call

import levers as L

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = str(__import__("pathlib").Path(__import__("os").environ.get("MOEC_DATA", __import__("pathlib").Path(__file__).resolve().parents[3].parent / "shared" / "data")))
VOLUMES = {
    "hipct": "hipct_brain_sci_64.tif",
    "ct_head": "ct_head_vtk_headsq.tif",
    "mri4d": "mri_4d_epi_nibabel_afni_example4d.tif",
    "macaque": "mri_t1_macaque_inia19_mricron.tif",
}

DEFAULTS = dict(
    steps=10**9,          # step budget (schedule length in steps)
    time_limit=None,      # CPU-second budget (schedule length in seconds)
    ckpt_every=15.0,      # CPU seconds between file checkpoints (0: none)
    ckpt_steps=None,      # or: checkpoint every N steps
    batch=16384,
    lr=2e-3,
    sched="exp",          # exp | cosine | const
    lr_final=0.05,        # exp: final factor; cosine: final fraction of peak
    warmup=0.0,           # cosine warm-up fraction
    beta1=0.9, beta2=0.999, eps=1e-8,
    sampler="uniform",    # uniform | perm | error
    err_uniform=0.5, err_floor=0.1, err_weighted=False, err_power=1.0,
    capacity=1.25,
    freeze=0.6,
    balance=0.01,
    fused=False,          # fused sine layers + small softmax (levers.fast_forward)
    bf16=False,
    compile=False,
    keep_heap=False,
    seed=0,
    # architecture overrides (None: the product's automatic sizing)
    experts=None, top_k=1, layers=3, hidden=None, w0_first=None,
    # rate-aware training
    qnoise=0.0,           # fraction of the run (at the end) with quantization noise
    qnoise_refresh=200,   # steps between refreshes of the rate controller's step
    rate_lambda=0.0,      # weight of the Laplace rate proxy (bits per param) in the loss
    rdoq=0,               # greedy integer refinement passes after training
    best_state=False,     # product behaviour: keep the best-EMA-loss state (off: last weights)
    restarts=0,           # short random-init trials (each restart_frac of the budget), keep best
    restart_frac=0.05,
    diag_every=0,         # print train PSNR / expert load / drop rate every N steps
    gate_lr=None,         # separate peak lr for the router (None: same as lr)
    enc_lr=None,          # separate peak lr for the first (encoder) sine layer
    guard=False,          # levers.LossGuard: roll back + halve lr on a loss jump
)


def load(name):
    return tifffile.imread(os.path.join(DATA, VOLUMES[name]))


def parse(argv):
    cfg = dict(DEFAULTS)
    for kv in argv:
        k, v = kv.split("=", 1)
        if k not in cfg:
            raise SystemExit(f"unknown option {k}")
        d = DEFAULTS[k]
        if v == "None":
            cfg[k] = None
        elif isinstance(d, bool):
            cfg[k] = v.lower() in ("1", "true", "yes")
        elif isinstance(d, int) and not isinstance(d, bool) and k not in ("time_limit",):
            cfg[k] = int(float(v))
        else:
            try:
                cfg[k] = float(v)
            except ValueError:
                cfg[k] = v
    return cfg


def matmul_gflops() -> float:
    a = torch.randn(1024, 1024)
    a @ a
    t = time.perf_counter()
    for _ in range(5):
        a @ a
    return 5 * 2 * 1024**3 / (time.perf_counter() - t) / 1e9


def step_flops(mcfg, batch) -> float:
    """Useful FLOPs of one training step: 3x the forward's matmul FLOPs on the real points
    (no padding), forward + backward (input and weight gradients)."""
    h, g, n, k = mcfg.hidden_features, mcfg.gate_hidden, mcfg.num_experts, mcfg.top_k
    f = 2 * batch * (mcfg.in_features * h + h)
    if n > 1:
        f += 2 * batch * (h * g + g * g + g * n)
    f += 2 * batch * k * h * h * mcfg.expert_layers
    return 3.0 * f


def run(name: str, volume_name: str, ratio: float, cfg: dict, out_dir=None) -> dict:
    from dataclasses import replace

    from napari_moec.budget import summary_reserve
    from napari_moec.compressed import Compressed
    from napari_moec.metrics import psnr
    from napari_moec.families.siren.moe import MoESiren
    from napari_moec.sampling import flat_index_coords
    from napari_moec.training import Compressor

    torch.set_num_threads(1)
    if cfg["keep_heap"]:
        L.keep_heap()
    vol = load(volume_name)
    kw = {}
    if cfg["experts"] is not None:
        kw["num_experts"] = int(cfg["experts"])
    if cfg["hidden"] is not None:
        kw["hidden_features"] = int(cfg["hidden"])
    if cfg["w0_first"] is not None:
        kw["w0_first"] = float(cfg["w0_first"])
    comp = Compressor(vol, ratio, top_k=cfg["top_k"], expert_layers=cfg["layers"], **kw,
                      threads=1)
    header, mcfg = comp.header, comp.header.model
    reserve = summary_reserve(header) if comp.stores_summary else 0
    budget = comp.budget - reserve
    shape = header.shape
    target = torch.from_numpy(comp.normalization.apply(vol).reshape(-1))
    n_vox = target.numel()
    batch = min(int(cfg["batch"]), n_vox)
    gflops = matmul_gflops()
    flops = step_flops(mcfg, batch)

    def evaluate_file(state):
        data, qstep = comp._fit_budget(header, state, budget)
        dec = Compressed.from_bytes(data).decode()
        return psnr(vol, dec), len(data) + reserve, qstep

    from napari_moec.decode import evaluate as _evaluate

    def float_vs_file(state):
        """PSNR of the unquantized network, and the fraction of voxels whose top-1 expert
        differs between the float network and the file's."""
        data, _ = comp._fit_budget(header, state, budget)
        cq = Compressed.from_bytes(data)
        fm = MoESiren(mcfg)
        fm.load_state_dict(state)
        fv = comp.normalization.invert(_evaluate(fm, shape), vol.dtype)
        if mcfg.num_experts > 1:
            lf = _evaluate(fm, shape, labels=True)
            lq = cq.expert_labels()
            flips = float((lf != lq).mean())
        else:
            flips = 0.0
        return psnr(vol, fv), flips

    def make_model(seed):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return MoESiren(mcfg)

    seed = int(cfg["seed"])
    gen = torch.Generator().manual_seed(seed)
    model = make_model(seed)

    if cfg["compile"]:  # compile-friendly: static shapes, plain sin (inductor fuses it)
        forward = lambda m, x, cf: L.fast_forward(m, x, cf, fused=cfg["fused"], bf16=cfg["bf16"])
    elif cfg["fused"] or cfg["bf16"]:
        forward = lambda m, x, cf: L.fast_forward(m, x, cf, bf16=cfg["bf16"])
    else:
        forward = lambda m, x, cf: m(x, cf)

    compile_cpu = 0.0
    step_fn_compiled = None

    steps_budget = int(cfg["steps"])
    tlim = cfg["time_limit"]
    span = (header.norm[1] - header.norm[0]) ** 2

    curve = []
    cpu = wall = 0.0
    step = 0

    # --- optional: several short random inits, keep the best (by training loss) ---
    restart_log = []
    if cfg["restarts"]:
        trial_cpu = cfg["restart_frac"] * (tlim or 60.0)
        best = None
        for r in range(int(cfg["restarts"])):
            m = make_model(seed + 1000 * (r + 1)) if r else model
            opt = torch.optim.Adam(m.parameters(), lr=cfg["lr"], fused=True)
            t0c, t0w = time.thread_time(), time.perf_counter()
            losses = []
            while time.thread_time() - t0c < trial_cpu:
                idx = torch.randint(n_vox, (batch,), generator=gen)
                out = forward(m, flat_index_coords(idx, shape), cfg["capacity"])
                kept = out.kept.float()
                mse = (((out.value[:, 0] - target[idx]) ** 2) * kept).sum() / kept.sum()
                loss = mse + cfg["balance"] * out.aux_loss
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                losses.append(float(mse))
                step += 1
            cpu += time.thread_time() - t0c
            wall += time.perf_counter() - t0w
            score = float(np.mean(losses[-10:]))
            restart_log.append(score)
            if best is None or score < best[0]:
                best = (score, m)
        model = best[1]

    gate_ids = {id(p) for p in model.gate_parameters()}
    enc_ids = {id(p) for p in model.encoder.parameters()} if cfg["enc_lr"] else set()
    groups = [{"params": [p for p in model.parameters() if id(p) not in gate_ids | enc_ids],
               "scale": 1.0}]
    if enc_ids:
        groups.append({"params": list(model.encoder.parameters()),
                       "scale": cfg["enc_lr"] / cfg["lr"]})
    if gate_ids:
        groups.append({"params": model.gate_parameters(),
                       "scale": (cfg["gate_lr"] / cfg["lr"]) if cfg["gate_lr"] else 1.0})
    opt = torch.optim.Adam(groups, lr=cfg["lr"], betas=(cfg["beta1"], cfg["beta2"]),
                           eps=cfg["eps"], fused=True)
    if cfg["sampler"] == "uniform":
        sampler = L.UniformSampler(n_vox, batch, gen)
    elif cfg["sampler"] == "perm":
        sampler = L.PermSampler(n_vox, batch, gen)
    elif cfg["sampler"] == "error":
        sampler = L.ErrorSampler(n_vox, batch, gen, uniform=cfg["err_uniform"],
                                 floor=cfg["err_floor"], weighted=cfg["err_weighted"],
                                 power=cfg["err_power"])
    else:
        raise SystemExit(cfg["sampler"])

    guard = L.LossGuard(model, opt) if cfg["guard"] else None
    frozen = mcfg.num_experts == 1
    qnoise_on = False
    qstep_cur = 1.0
    next_ckpt = cfg["ckpt_every"] if cfg["ckpt_every"] else math.inf
    ckpt_steps = cfg["ckpt_steps"]
    last_loss = math.nan
    best_loss, best_sd, ema = math.inf, None, None
    acc, acc_n = 0.0, 0
    step0 = step

    lr = cfg["lr"]

    def train_step(index, weights, params):
        coords = flat_index_coords(index, shape)
        if params is not None:
            out = functional_call(model, params, (coords, cfg["capacity"]))
        else:
            out = forward(model, coords, cfg["capacity"])
        kept = out.kept.to(out.value.dtype)
        err = (out.value[:, 0].float() - target[index]) ** 2
        w = kept if weights is None else kept * weights
        mse = (err * w).sum() / w.sum().clamp(min=1.0)
        loss = mse if frozen else mse + cfg["balance"] * out.aux_loss
        if cfg["rate_lambda"] and qnoise_on:
            loss = loss + cfg["rate_lambda"] * L.laplace_rate_bits(model, qstep_cur) / n_params
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if cfg["diag_every"] and step % int(cfg["diag_every"]) == 0:
            print(f"  diag step {step} lr {lr:.2e} train_psnr "
                  f"{10 * math.log10(span / max(float(mse), 1e-30)):.2f} load "
                  f"{[round(float(v), 3) for v in out.load]} kept {float(kept.mean()):.3f}",
                  flush=True)
        return mse.detach(), err.detach()

    n_params = sum(p.numel() for p in model.parameters())
    if cfg["compile"]:
        t0c, t0w = time.thread_time(), time.perf_counter()
        base_forward = forward
        compiled = torch.compile(lambda m, x, cf: base_forward(m, x, cf), dynamic=False)
        forward_c = compiled
        # warm the compile with two steps (forward + backward graphs), counted as training
        for _ in range(2):
            idx, w = sampler.sample()
            out = forward_c(model, flat_index_coords(idx, shape), cfg["capacity"])
            (out.value.sum() * 0).backward()
            opt.zero_grad(set_to_none=True)
        compile_cpu = time.thread_time() - t0c
        compile_wall = time.perf_counter() - t0w
        cpu += compile_cpu
        wall += compile_wall
        forward = forward_c

    while True:
        progress = (step - step0) / steps_budget
        if tlim:
            progress = max(progress, cpu / tlim)
        if progress >= 1.0:
            break
        c0, w0_ = time.thread_time(), time.perf_counter()
        if cfg["sched"] == "exp":
            lr = L.exp_schedule(progress, cfg["lr"], cfg["lr_final"])
        elif cfg["sched"] == "cosine":
            lr = L.cosine_schedule(progress, cfg["lr"], cfg["warmup"], cfg["lr_final"])
        elif cfg["sched"] == "wexp":
            lr = L.warmup_exp_schedule(progress, cfg["lr"], cfg["warmup"], cfg["lr_final"])
        else:
            lr = cfg["lr"]
        for g in opt.param_groups:
            g["lr"] = lr * g.get("scale", 1.0) * (guard.lr_scale if guard else 1.0)
        if not frozen and progress >= cfg["freeze"]:
            for p in model.gate_parameters():
                p.requires_grad_(False)
                p.grad = None
            frozen = True
        params = None
        if cfg["qnoise"] and progress >= 1.0 - cfg["qnoise"]:
            if not qnoise_on or (step - step0) % int(cfg["qnoise_refresh"]) == 0:
                # the rate controller's step for the current weights (cost counted)
                sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
                qstep_cur = L.current_rate_step(header, sd, budget)
                qnoise_on = True
            params = L.quant_noise_params(model, qstep_cur)
        elif cfg["rate_lambda"] and progress >= 0.5:
            if not qnoise_on or (step - step0) % int(cfg["qnoise_refresh"]) == 0:
                sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
                qstep_cur = L.current_rate_step(header, sd, budget)
                qnoise_on = True
        index, weights = sampler.sample()
        mse, err = train_step(index, weights, params)
        sampler.update(index, err)
        step += 1
        if guard is not None:
            guard.observe(step, mse)
        acc += float(mse) if step % 10 == 0 else 0.0
        if cfg["best_state"] and step % 10 == 0:
            lv = float(mse)
            ema = lv if ema is None else 0.7 * ema + 0.3 * lv
            if ema < best_loss:
                best_loss = ema
                best_sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if step % 50 == 0:
            last_loss = float(mse)
            if not math.isfinite(last_loss):
                curve.append(dict(step=step, cpu=cpu, wall=wall, diverged=True))
                break
        cpu += time.thread_time() - c0
        wall += time.perf_counter() - w0_
        do_ckpt = cpu >= next_ckpt or (ckpt_steps and step % int(ckpt_steps) == 0)
        if do_ckpt:
            while next_ckpt <= cpu:
                next_ckpt += cfg["ckpt_every"] or math.inf
            sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
            p, nb, qs = evaluate_file(sd)
            fp, flips = float_vs_file(sd)
            curve.append(dict(step=step, cpu=round(cpu, 2), wall=round(wall, 2), psnr=round(p, 3),
                              float_psnr=round(fp, 3), route_flips=round(flips, 5),
                              bytes=nb, qstep=qs, lr=lr, train_psnr=round(
                                  10 * math.log10(span / max(last_loss, 1e-30)), 3)))
            print(f"[{name}] step {step} cpu {cpu:.1f}s wall {wall:.1f}s file {p:.2f} dB "
                  f"({nb} B, step {qs:.3f}) float {fp:.2f} dB flips {flips:.4f} lr {lr:.2e}",
                  flush=True)

    final_sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if cfg["best_state"] and best_sd is not None:
        final_sd = best_sd
    t_rd = time.thread_time()
    rdoq_info = None
    final_sd_pre = final_sd
    if cfg["rdoq"]:
        import rdoq
        final_sd, rdoq_info = rdoq.refine(comp, header, final_sd, budget, vol,
                                          passes=int(cfg["rdoq"]))
    rdoq_cpu = time.thread_time() - t_rd
    if rdoq_info is not None:
        # the refined integers are only exact at the step they were refined for
        from napari_moec.format import pack
        data = pack(header, final_sd, rdoq_info["step"])
        assert len(data) <= budget
        p, nb, qs = psnr(vol, Compressed.from_bytes(data).decode()), len(data) + reserve, \
            rdoq_info["step"]
        p0, _, _ = evaluate_file(final_sd_pre)
        rdoq_info["psnr_before"] = p0
    else:
        p, nb, qs = evaluate_file(final_sd)
    fp, flips = float_vs_file(final_sd_pre)
    final = dict(step=step, cpu=round(cpu, 2), wall=round(wall, 2), psnr=round(p, 3), bytes=nb,
                 float_psnr=round(fp, 3), route_flips=round(flips, 5),
                 qstep=qs, rdoq_cpu=round(rdoq_cpu, 2), final=True)
    curve.append(final)
    print(f"[{name}] FINAL step {step} cpu {cpu:.1f}s wall {wall:.1f}s file {p:.3f} dB ({nb} B)"
          f" float {fp:.3f} dB flips {flips:.4f}",
          flush=True)
    steps_run = step - step0
    res = dict(
        name=name, volume=volume_name, ratio=ratio, cfg=cfg, model=mcfg.__dict__,
        budget=comp.budget, n_params=n_params, matmul_gflops=round(gflops, 1),
        step_gflop=flops / 1e9, ms_per_step=round(1e3 * cpu / max(1, step), 3),
        wall_ms_per_step=round(1e3 * wall / max(1, step), 3),
        pct_matmul=round(100 * flops * step / max(cpu, 1e-9) / 1e9 / gflops, 2),
        compile_cpu=compile_cpu, restart_losses=restart_log, rdoq=rdoq_info,
        guard_rollbacks=guard.rollbacks if guard else None,
        curve=curve, final=final, loadavg=os.getloadavg(),
    )
    out_dir = out_dir or os.path.join(HERE, "results")
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, f"{name}.json"), "w") as f:
        json.dump(res, f, indent=1, default=str)
    return res


if __name__ == "__main__":
    name, volume_name, ratio = sys.argv[1], sys.argv[2], float(sys.argv[3])
    cfg = parse(sys.argv[4:])
    r = run(name, volume_name, ratio, cfg)
    print(json.dumps({k: r[k] for k in ("name", "ms_per_step", "wall_ms_per_step", "pct_matmul",
                                        "matmul_gflops", "final")}))
