"""Speed: training and decode throughput as fractions of the device's dense matmul rate.

Measures, in one run on one device:

* ``matmul``: dense fp32 ``torch.matmul`` FLOP/s, a large square product (the machine's
  practical peak) and the ``(batch, H) @ (H, H)`` product of one expert layer (what a layer
  this narrow can reach at best);
* training: points/s and achieved FLOP/s of ``Compressor.run()`` (steps after a warm-up,
  timed by the ``Progress.elapsed`` training clock), the PSNR-vs-seconds curve (time-to-PSNR)
  from the ``Progress`` events, the final file's PSNR;
* decode: voxels/s and FLOP/s of ``Compressed.decode`` on the whole grid;
* the sine-layer bound: one ``addmm`` of the expert width and its ``sin`` at the decoder's
  chunk size, alone: the ceiling that the sines put on any code at this width;
* peak memory: ``resource.getrusage`` max RSS (CPU) or ``torch.cuda.max_memory_allocated``.

FLOP count (multiply-add = 2 FLOP; sine, softmax, indexing and the optimizer not counted),
per coordinate, for in_features d, width H, router width G, n experts, top-k k, L expert
layers::

    F_fwd = 2 * (d*H + H*G + G*G + G*n + k*L*H*H + H)
    F_train = 3 * F_fwd   (backward = 2x forward: input and weight gradients)

"useful" FLOPs count k experts per point; "executed" FLOPs count the expert buffers with their
capacity padding (capacity_factor * k * B slots per step), what the hardware actually runs.

``--profile`` runs ``torch.profiler`` over ``--profile-steps`` training steps after a warm-up
and writes the top ops (by self CPU time) and a summary by op family to ``--profile-out``.

    python benchmarks/speed.py --device cpu --volume hipct --ratio 64 --steps 100
    python benchmarks/speed.py --device cpu --profile --profile-out docs/benchmarks/profile-cpu.txt
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from collections import defaultdict
from pathlib import Path

import torch

from _common import OUT, SPACING, load_volume, provenance, quality, write_json
from napari_moec import ArchConfig, Compressed, Compressor, Progress, RunConfig, TrainConfig
from napari_moec.decode import CHUNK_VOXELS


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_flops(device: torch.device, m: int, k: int, n: int, seconds: float = 1.0) -> float:
    """Best-of dense fp32 ``(m,k) @ (k,n)`` rate in FLOP/s over about ``seconds``."""
    a = torch.randn(m, k, device=device)
    b = torch.randn(k, n, device=device)
    for _ in range(3):
        torch.matmul(a, b)
    sync(device)
    best, spent, reps = 0.0, 0.0, 1
    while spent < seconds:
        t0 = time.perf_counter()
        for _ in range(reps):
            torch.matmul(a, b)
        sync(device)
        dt = time.perf_counter() - t0
        spent += dt
        best = max(best, 2.0 * m * k * n * reps / dt)
        if dt < 0.05:
            reps *= 2
    return best


def flops_per_point(model) -> dict:
    d, h, g = model.in_features, model.hidden_features, model.gate_hidden
    n, k, layers = model.num_experts, model.top_k, model.expert_layers
    dense = 2 * (d * h + h * g + g * g + g * n + h * model.out_features)
    experts = 2 * k * layers * h * h
    return {"forward_dense": dense, "forward_experts": experts, "forward": dense + experts}


def peak_memory(device: torch.device) -> dict:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    out = {"max_rss_mib": round(rss, 1)}
    if device.type == "cuda":
        out["cuda_max_allocated_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


def _compressor(args, vol, device, steps, time_limit=None) -> Compressor:
    train = TrainConfig(
        steps=steps, time_limit=time_limit, batch_size=args.batch, report_every=args.report_every
    )
    return Compressor(
        vol,
        args.ratio,
        run=RunConfig(device=str(device), threads=args.threads),
        arch=ArchConfig(num_experts=args.experts or None, top_k=args.top_k),
        train=train,
        spacing=SPACING[args.volume],
    )


def _best_seconds(fn, device: torch.device, seconds: float) -> float:
    """Fastest single call of ``fn`` over about ``seconds`` (after 3 warm-up calls)."""
    for _ in range(3):
        fn()
    sync(device)
    best, spent = float("inf"), 0.0
    while spent < seconds:
        t0 = time.perf_counter()
        fn()
        sync(device)
        dt = time.perf_counter() - t0
        spent += dt
        best = min(best, dt)
    return best


@torch.inference_mode()
def sine_layer_bound(device: torch.device, batch: int, width: int, seconds: float = 1.0) -> dict:
    """The ceiling of a SIREN layer of this width: one ``(batch, width) @ (width, width)``
    ``addmm`` and the ``sin`` of its output, timed apart and together, with nothing else
    (no routing, gathers, coordinates or Python between layers). Every point of every layer
    needs its ``width`` sines, so ``flops / (addmm + sin)`` is the most a network of this
    width can reach, whatever the rest of the code does."""
    x = torch.rand(batch, width, device=device) * 2 - 1
    weight = torch.randn(width, width, device=device) / width**0.5
    bias = torch.randn(width, device=device)
    out = torch.empty(batch, width, device=device)
    t_mm = _best_seconds(lambda: torch.addmm(bias, x, weight, out=out), device, seconds)
    t_sin = _best_seconds(lambda: torch.sin(out, out=out), device, seconds)
    t_layer = _best_seconds(lambda: torch.addmm(bias, x, weight, out=out).sin_(), device, seconds)
    flops = 2.0 * batch * width * width
    return {
        "batch": batch,
        "width": width,
        "addmm_seconds": t_mm,
        "sin_seconds": t_sin,
        "layer_seconds": t_layer,
        "sin_share": t_sin / (t_mm + t_sin),
        "layer_flops_per_s": flops / t_layer,
    }


def benchmark(args, device: torch.device) -> dict:
    vol = load_volume(args.volume)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    threads = torch.get_num_threads()
    comp = _compressor(args, vol, device, args.steps, args.time_limit)
    model = comp.model_config
    batch = min(args.batch, vol.size)
    flops = flops_per_point(model)
    torch.set_num_threads(threads)
    t_mm = time.perf_counter()
    peak = matmul_flops(device, *(4096,) * 3 if device.type == "cuda" else (2048,) * 3)
    layer = matmul_flops(device, batch, model.hidden_features, model.hidden_features)
    mm_seconds = time.perf_counter() - t_mm
    chunk = CHUNK_VOXELS.get(device.type, CHUNK_VOXELS["cuda"])
    bound = sine_layer_bound(device, chunk, model.hidden_features)
    bound["fraction_of_peak"] = bound["layer_flops_per_s"] / peak

    curve, marks = [], {}
    run = comp.run()
    t0 = time.perf_counter()
    while True:
        try:
            event = next(run)
        except StopIteration as done:
            compressed = done.value
            break
        if isinstance(event, Progress):
            if event.step in (args.warmup, event.total_steps) or event.step == 1:
                marks[event.step] = event.elapsed
            marks["last"] = (event.step, event.elapsed)
            if event.step % args.report_every == 0:
                curve.append({"step": event.step, "seconds": event.elapsed, "psnr": event.psnr})
    total_seconds = time.perf_counter() - t0
    last_step, last_elapsed = marks["last"]
    warm = min(args.warmup, last_step - 1)
    timed_steps = last_step - warm
    timed = last_elapsed - marks.get(warm, 0.0)
    points_per_s = timed_steps * batch / timed
    capacity_factor = comp.train_config.capacity_factor
    executed = flops["forward_dense"] + flops["forward_experts"] * capacity_factor
    train = {
        "steps": last_step,
        "timed_steps": timed_steps,
        "timed_seconds": timed,
        "seconds_per_step": timed / timed_steps,
        "points_per_s": points_per_s,
        "flops_per_s_useful": 3 * flops["forward"] * points_per_s,
        "flops_per_s_executed": 3 * executed * points_per_s,
        "wall_seconds_incl_finish": total_seconds,
    }
    for key in ("flops_per_s_useful", "flops_per_s_executed"):
        train[key.replace("flops_per_s", "fraction_of_peak")] = train[key] / peak

    decode_times = []
    # From the file's bytes, as a reader decodes: the compressor's own result hands out the
    # volume it decoded once (a copy), which would time a memcpy.
    from_file = Compressed.from_bytes(compressed.data)
    for _ in range(3):
        sync(device)
        t1 = time.perf_counter()
        decoded = from_file.decode(device=device)
        sync(device)
        decode_times.append(time.perf_counter() - t1)
    voxels_per_s = vol.size / min(decode_times)
    decode = {
        "seconds": min(decode_times),
        "voxels_per_s": voxels_per_s,
        "flops_per_s": flops["forward"] * voxels_per_s,
    }
    decode["fraction_of_peak"] = decode["flops_per_s"] / peak
    return {
        "volume": args.volume,
        "shape": list(vol.shape),
        "ratio": args.ratio,
        "device": str(device),
        "model": {
            "hidden_features": model.hidden_features,
            "gate_hidden": model.gate_hidden,
            "num_experts": model.num_experts,
            "top_k": model.top_k,
            "expert_layers": model.expert_layers,
            "parameters": comp.plan.num_parameters,
        },
        "batch": batch,
        "capacity_factor": capacity_factor,
        "flops_per_point": flops,
        "matmul": {
            "peak_shape": [4096] * 3 if device.type == "cuda" else [2048] * 3,
            "peak_flops_per_s": peak,
            "layer_shape": [batch, model.hidden_features, model.hidden_features],
            "layer_flops_per_s": layer,
            "seconds": mm_seconds,
        },
        "sine_layer_bound": bound,
        "train": train,
        "decode": decode,
        "memory": peak_memory(device),
        "time_to_psnr": curve,
        "file": {"bytes": compressed.nbytes, **quality(vol, decoded)},
        "torch_threads": torch.get_num_threads(),
    }


FAMILIES = {
    "matmul (addmm/mm/bmm/baddbmm)": ("addmm", "mm", "bmm", "baddbmm", "matmul", "linear"),
    "sin/cos": ("sin", "cos"),
    "index/scatter/gather (dispatch)": (
        "index",
        "index_put",
        "index_add",
        "gather",
        "scatter",
        "nonzero",
        "masked",
        "cumsum",
        "one_hot",
        "bincount",
        "repeat",
        "arange",
        "topk",
        "sort",
    ),
    "optimizer (Adam, _foreach)": ("_foreach", "adam", "lerp", "addcdiv", "addcmul", "sqrt"),
    "random/coords (randint, remainder, div)": ("randint", "random", "remainder", "div", "stack"),
    "elementwise (mul/add/sub/pow/...)": ("mul", "add", "sub", "pow", "neg", "clamp", "where"),
    "allocation/copy (zeros/empty/copy/to)": ("zero", "empty", "copy", "to", "clone", "fill"),
}


def family(name: str) -> str:
    base = name.removeprefix("aten::").lower()
    for label, keys in FAMILIES.items():
        if any(base == k or base.startswith(k + "_") or base.startswith(k) for k in keys):
            return label
    return "other"


def profile(args, device: torch.device) -> str:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    vol = load_volume(args.volume)
    load_before = f"{os.getloadavg()[0]:.2f}"
    warm, steps = args.warmup, args.profile_steps
    # A long schedule that we stop early: the profiled steps stay in the main "train" phase
    # (the router freezes at 60% of the schedule, quantization-aware training starts at 90%).
    comp = _compressor(args, vol, device, steps=max(args.steps, 20 * (warm + steps)))
    run = comp.run()
    phases = set()
    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    stepped = 0
    while stepped < warm:
        if isinstance(next(run), Progress):
            stepped += 1
    sync(device)
    t0 = time.perf_counter()
    with torch_profile(activities=activities) as prof:
        while stepped < warm + steps:
            event = next(run)
            if isinstance(event, Progress):
                stepped += 1
                phases.add(event.phase)
        sync(device)
    wall = time.perf_counter() - t0
    comp.stop()
    run.close()

    events = prof.key_averages()
    self_total = sum(e.self_cpu_time_total for e in events) / 1e6
    by_family: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    for e in events:
        by_family[family(e.key)] += e.self_cpu_time_total / 1e6
        counts[family(e.key)] += e.count
    model = comp.model_config
    lines = [
        f"torch.profiler over {steps} training steps (after {warm} warm-up steps) of",
        f"Compressor({args.volume} {tuple(vol.shape)}, ratio={args.ratio:g}, "
        f"experts={model.num_experts}, top_k={model.top_k}, hidden={model.hidden_features}, "
        f"L={model.expert_layers}, batch={min(args.batch, vol.size)}) on {device}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"load average before/after {load_before} / {os.getloadavg()[0]:.2f} "
        f"on {os.cpu_count()} CPUs (other processes share them); training phase(s) "
        f"profiled: {', '.join(sorted(phases))}.",
        "",
        f"Wall time of the profiled steps: {wall:.3f} s ({wall / steps * 1e3:.1f} ms/step, "
        "profiler overhead included).",
        f"Sum of self CPU time of all aten ops: {self_total:.3f} s "
        f"({self_total / wall:.0%} of wall; the rest is Python and profiler overhead).",
        f"Ops launched per step: {sum(e.count for e in events) / steps:.0f}.",
        "",
        "Self CPU time by op family:",
    ]
    for label, seconds in sorted(by_family.items(), key=lambda kv: -kv[1]):
        lines.append(
            f"  {label:42s} {seconds:8.3f} s  {seconds / self_total:6.1%}  "
            f"{counts[label] / steps:6.1f} calls/step"
        )
    sort_key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    lines += ["", f"Top ops by {sort_key}:", ""]
    lines.append(
        events.table(sort_by=sort_key, row_limit=args.profile_rows, max_name_column_width=40)
    )
    text = "\n".join(lines)
    out = Path(args.profile_out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
    return text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--volume", default="hipct")
    parser.add_argument("--ratio", type=float, default=64)
    parser.add_argument("--experts", type=int, default=0, help="0: the library's auto choice")
    parser.add_argument("--top-k", type=int, default=1)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--time-limit", type=float, default=None)
    parser.add_argument("--batch", type=int, default=TrainConfig().batch_size)
    parser.add_argument("--report-every", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=10, help="steps left out of the timing")
    parser.add_argument(
        "--threads", type=int, default=None, help="CPU threads (default: the library's choice)"
    )
    parser.add_argument("--out", type=Path, default=OUT / "speed")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--profile-steps", type=int, default=50)
    parser.add_argument("--profile-rows", type=int, default=30)
    parser.add_argument("--profile-out", default=str(OUT / "profile.txt"))
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA GPU here")
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    if args.profile:
        print(profile(args, device))
        return 0
    record = benchmark(args, device)
    record["wall_seconds"] = time.perf_counter() - t0
    record.update(provenance(str(device)))
    experts = record["model"]["num_experts"]
    tag = f"{args.volume}_{args.ratio:g}x_e{experts}k{args.top_k}_b{args.batch}"
    if args.threads:
        tag += f"_t{args.threads}"
    path = args.out / f"speed_{device.type}_{tag}.json"
    write_json(path, record)
    t, d, m = record["train"], record["decode"], record["matmul"]
    b = record["sine_layer_bound"]
    print(
        f"{device}: matmul peak {m['peak_flops_per_s'] / 1e9:.1f} GFLOP/s, layer-shape "
        f"{m['layer_flops_per_s'] / 1e9:.1f} GFLOP/s\n"
        f"train {t['points_per_s'] / 1e6:.3f} Mpoints/s, {t['flops_per_s_useful'] / 1e9:.2f} "
        f"GFLOP/s useful ({t['fraction_of_peak_useful']:.1%} of peak), "
        f"{t['seconds_per_step'] * 1e3:.1f} ms/step\n"
        f"decode {d['voxels_per_s'] / 1e6:.3f} Mvoxels/s, {d['flops_per_s'] / 1e9:.2f} GFLOP/s "
        f"({d['fraction_of_peak']:.1%} of peak)\n"
        f"sine layer of this width alone (addmm + sin, batch {b['batch']}): "
        f"{b['fraction_of_peak']:.1%} of peak, sin {b['sin_share']:.0%} of its time\n"
        f"memory {record['memory']}; file {record['file']}\n-> {path}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
