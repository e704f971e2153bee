"""GPU time to quality and decode speed: the measurements of a lent GPU's short lease, in one run.

A lent GPU comes for minutes, so every measurement that needs one is a row of this script and
the whole set runs in one call, under one deadline: runs that would not finish before it are
skipped (and listed), and each finished run is written to its JSON at once, so a run cut short
by the lease still returns what it measured.

Each row compresses a volume to a ratio with one model family for a training time limit on the
GPU (the schedule follows the time limit), saves the file, reloads it, decodes it from disk on
the GPU and measures PSNR/SSIM against the original over its data range. The decode is timed a
second time once warm (CUDA context, kernels), which is the number stated.

Volumes: the shared ones (``hipct``, ``ct_head``, ``mri4d``, ``macaque``) and
``macaque-mirror256``: the macaque T1 (128x206x168 float32) extended to 256³ by symmetric
reflection on every axis (the rule ``benchmarks/tiled.py`` uses for its 512³ stores), a real
texture at the size of the paper's crops.

    python benchmarks/gpu_session.py --deadline 420 \\
        --run macaque-mirror256:256:grid:30 macaque-mirror256:256:grid:60 \\
        --out docs/benchmarks/data/gpu
    python benchmarks/gpu_session.py report --out docs/benchmarks/data/gpu
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import ROOT, load_volume, provenance, quality, write_json

DATA_OUT = ROOT / "docs" / "benchmarks" / "data" / "gpu"
DOC = ROOT / "docs" / "benchmarks" / "gpu.md"


def mirror_index(n_target: int, n_source: int) -> np.ndarray:
    """Symmetric reflection of 0..n_target-1 onto 0..n_source-1 (0 1 .. n-1 n-1 .. 1 0 0 1 ..)."""
    period = np.arange(n_target) % (2 * n_source)
    return np.where(period < n_source, period, 2 * n_source - 1 - period)


def volume(name: str) -> np.ndarray:
    if name.endswith("-mirror256"):
        source = load_volume(name.removesuffix("-mirror256"))
        index = [mirror_index(256, n) for n in source.shape]
        return np.ascontiguousarray(source[np.ix_(*index)])
    return load_volume(name)


def one_run(spec: str, out: Path, device: str) -> dict:
    import torch

    import napari_moec

    name, ratio, family, seconds = spec.split(":")
    ratio, seconds = float(ratio), float(seconds)
    data = volume(name)
    options = {"time_limit": seconds, "steps": 10**7, "device": device}
    if family != "default":
        options["model"] = family
    t0 = time.perf_counter()
    compressed = napari_moec.compress(data, ratio=ratio, **options)
    wall = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "v.moec"
        compressed.save(path)
        file_bytes = path.stat().st_size
        loaded = napari_moec.load(path)
        timings = []
        for _ in range(2):  # the second is warm: CUDA context and kernels ready
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            t1 = time.perf_counter()
            decoded = loaded.decode(device=device)
            timings.append(time.perf_counter() - t1)
    record = {
        "spec": spec,
        "volume": name,
        "shape": list(data.shape),
        "dtype": str(data.dtype),
        "ratio": ratio,
        "family": family,
        "time_limit_s": seconds,
        "compress_wall_s": round(wall, 2),
        "file_bytes": file_bytes,
        "ratio_reached": round(data.nbytes / file_bytes, 2),
        "decode_s_cold": round(timings[0], 4),
        "decode_s_warm": round(timings[1], 4),
        "decode_mvoxel_s": round(data.size / timings[1] / 1e6, 2),
        "quality": quality(data, decoded),
        "report": {k: v for k, v in compressed.report.to_dict().items() if _plain(v)},
        "peak_gpu_bytes": int(torch.cuda.max_memory_allocated())
        if device.startswith("cuda")
        else None,
        **provenance(device),
    }
    safe = spec.replace(":", "_")
    write_json(out / f"{safe}.json", record)
    return record


def _plain(value) -> bool:
    return isinstance(value, (int, float, str, bool, type(None), list, tuple))


def run(args) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    skipped = []
    for spec in args.run:
        seconds = float(spec.split(":")[3])
        left = args.deadline - (time.perf_counter() - start)
        # training + store + two decodes; the margin is what a 256³ store and decode took
        if seconds + args.margin > left:
            skipped.append(spec)
            print(f"skip {spec}: {left:.0f} s left", flush=True)
            continue
        try:
            r = one_run(spec, out, args.device)
        except Exception as exc:  # one failed row must not cost the rest of the lease
            print(f"FAIL {spec}: {type(exc).__name__}: {exc}", flush=True)
            continue
        q = r["quality"]
        print(
            f"{spec}: {q['psnr']:.2f} dB ssim {q['ssim']:.4f} {r['file_bytes']} B "
            f"(x{r['ratio_reached']}) wall {r['compress_wall_s']} s "
            f"decode {r['decode_mvoxel_s']} Mvox/s",
            flush=True,
        )
    if skipped:
        print("skipped:", " ".join(skipped))
    return 0


def report(args) -> int:
    rows = [json.loads(p.read_text()) for p in sorted(Path(args.out).glob("*.json"))]
    if not rows:
        print("no runs in", args.out)
        return 1
    lines = [
        "| volume | shape | ratio | family | time limit (s) | wall (s) | bytes | PSNR (dB) | SSIM "
        "| decode (Mvox/s, warm) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: (r["volume"], r["ratio"], r["family"], r["time_limit_s"])):
        lines.append(
            f"| {r['volume']} | {'x'.join(map(str, r['shape']))} | {r['ratio']:g}x | "
            f"{r['family']} | {r['time_limit_s']:g} | {r['compress_wall_s']} | {r['file_bytes']} "
            f"| {r['quality']['psnr']:.2f} | {r['quality']['ssim']:.4f} | {r['decode_mvoxel_s']} |"
        )
    first = rows[0]
    lines += [
        "",
        f"Machine: {first['machine'].get('gpu')} (CUDA {first['machine'].get('cuda')}), "
        f"torch {first['machine']['torch']}, {first['machine'].get('cpu_model')}; "
        f"commit {first.get('commit')}; {first['date']}.",
        f"Command: `{first['command']}`",
    ]
    print("\n".join(lines))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("action", nargs="?", default="run", choices=["run", "report"])
    parser.add_argument("--run", nargs="+", default=[], help="volume:ratio:family:seconds")
    parser.add_argument("--deadline", type=float, default=420.0, help="seconds for all rows")
    parser.add_argument("--margin", type=float, default=25.0, help="seconds per row past training")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", default=str(DATA_OUT))
    args = parser.parse_args(argv)
    return run(args) if args.action == "run" else report(args)


if __name__ == "__main__":
    sys.exit(main())
