"""MoE backends: training step time (and dropless decode time) of the native routing against
Tutel's (``napari_moec.nn.tutel_backend``), same network, same seed, same device.

Two sets of networks:

* the shared volumes' default networks: ``--volumes`` at ``--ratios`` (default 256x, the
  library's default ratio) with the default architecture (the budget picks experts and width);
* an expert sweep: ``--sweep VOLUME:RATIO`` with ``--experts`` (8-16) x ``--top-k`` (1, 2),
  the width again sized to the budget.

Each (network, threads) pair trains ``--warmup`` + ``--steps`` optimiser steps per backend
through ``Compressor.train`` (sampling, forward, loss, backward, fused Adam: the real step,
router freeze at 60% of the schedule included), ``--rounds`` times with the backends
alternating, and keeps the per-step times of the ``Progress.elapsed`` clock after the warm-up.
The median is reported: the dev machine is shared, and a median resists another job's bursts
better than a mean. Decode time is the dropless forward of one ``CHUNK_VOXELS`` chunk
(``--decode-reps`` repetitions, median). Load averages before and after each measurement are
in the JSON. One JSON per (network, threads) under ``--out``; ``--markdown`` rebuilds the
table from every JSON there (``--markdown-only`` without measuring).

    python benchmarks/backends.py --threads 1 2
    python benchmarks/backends.py --markdown-only
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from _common import ROOT, VOLUMES, load_volume, provenance, write_json
from napari_moec import ArchConfig, Compressor, Progress, RunConfig, TrainConfig
from napari_moec.decode import CHUNK_VOXELS
from napari_moec.nn.tutel_backend import TUTEL_COMMIT, tutel_importable
from napari_moec.plan import plan

OUT = ROOT / "docs" / "benchmarks" / "data" / "backends"
MARKDOWN = ROOT / "docs" / "benchmarks" / "backends.md"
BACKENDS = ("native", "tutel")


def load_average() -> float:
    return round(os.getloadavg()[0], 2)


def measure(volume, ratio, arch, backend, args, threads) -> dict:
    """Per-step seconds after the warm-up, and the median decode seconds of one chunk."""
    comp = Compressor(
        volume,
        ratio,
        arch=arch,
        train=TrainConfig(steps=args.warmup + args.steps, batch_size=args.batch_size, seed=0),
        run=RunConfig(device=args.device, threads=threads, backend=backend),
    )
    elapsed = []
    gen = comp.train()
    while True:
        try:
            event = next(gen)
        except StopIteration as done:
            model = done.value[0]
            break
        if isinstance(event, Progress):
            elapsed.append(event.elapsed)
    steps = np.diff([0.0, *elapsed])[args.warmup :].tolist()
    coords = torch.rand(CHUNK_VOXELS, volume.ndim, device=comp.device) * 2 - 1
    decode = []
    with torch.no_grad():
        model.eval()
        model.decode(coords)  # warm-up
        for _ in range(args.decode_reps):
            t0 = time.perf_counter()
            model.decode(coords)
            if comp.device.type == "cuda":
                torch.cuda.synchronize()
            decode.append(time.perf_counter() - t0)
    return {"step_seconds": steps, "decode_chunk_seconds": decode, "model": comp.model_config}


def run_pair(name, volume, ratio, arch, args, threads) -> dict:
    """Both backends on one network, alternating their order round by round."""
    record = {"volume": name, "ratio": ratio, "threads": threads, "device": args.device}
    record["batch_size"], record["rounds"] = args.batch_size, args.rounds
    results = {b: {"step_seconds": [], "decode_chunk_seconds": []} for b in BACKENDS}
    loads = [load_average()]
    torch.set_num_threads(threads)
    for round_ in range(args.rounds):
        for backend in BACKENDS if round_ % 2 == 0 else BACKENDS[::-1]:
            got = measure(volume, ratio, arch, backend, args, threads)
            for key in ("step_seconds", "decode_chunk_seconds"):
                results[backend][key] += got[key]
            loads.append(load_average())
            model = got["model"]
    record["model"] = {
        "num_experts": model.num_experts,
        "top_k": model.top_k,
        "hidden_features": model.hidden_features,
        "gate_hidden": model.gate_hidden,
        "expert_layers": model.expert_layers,
    }
    for got in results.values():
        got["median_step_s"] = statistics.median(got["step_seconds"])
        got["median_decode_chunk_s"] = statistics.median(got["decode_chunk_seconds"])
    record["results"] = results
    record["tutel_over_native_step"] = round(
        results["tutel"]["median_step_s"] / results["native"]["median_step_s"], 3
    )
    record["load_average_1min"] = loads
    return record


def jobs(args):
    for name in args.volumes:
        for ratio in args.ratios:
            yield name, ratio, ArchConfig()
    for spec in args.sweep:
        name, ratio = spec.split(":")
        for experts in args.experts:
            for top_k in args.top_k:
                yield name, float(ratio), ArchConfig(num_experts=experts, top_k=top_k)


def file_name(device: str, volume: str, ratio: float, model, threads: int) -> str:
    return (
        f"backends_{device}_{volume}_{ratio:g}x_e{model.num_experts}k{model.top_k}_t{threads}.json"
    )


def markdown(out: Path) -> str:
    records = [json.loads(p.read_text()) for p in sorted(out.glob("backends_*.json"))]
    records.sort(
        key=lambda r: (
            r["device"],
            r["model"]["num_experts"] > 2,
            list(VOLUMES).index(r["volume"]),
            r["ratio"],
            r["model"]["num_experts"],
            r["model"]["top_k"],
            r["threads"],
        )
    )
    if not records:
        return "# MoE backends: native vs Tutel\n\nNo measurements yet.\n"
    first = records[0]["provenance"]
    machine = first["machine"]
    commands = sorted({r["provenance"]["command"] for r in records})
    commits = sorted({r["provenance"]["commit"][:7] for r in records})
    ratios = [r["tutel_over_native_step"] for r in records]
    faster = sum(x < 1 for x in ratios)
    lines = [
        "# MoE backends: native vs Tutel",
        "",
        "Training step time of the native MoE routing (gathers with known inverses, one "
        "`baddbmm` per expert layer) against Tutel's (`extract_critical` + `fast_encode` / "
        f"`fast_decode`, commit `{TUTEL_COMMIT[:12]}`), same network, same seed, same "
        "device. Both backends compute the same function (tests/test_tutel.py); this is only "
        "about speed. Generated by `benchmarks/backends.py` from the JSONs in "
        "`docs/benchmarks/data/backends/`.",
        "",
        "Commands: " + "; ".join(f"`{c}`" for c in commands),
        "",
        f"Machine: {machine.get('cpu_model', machine['processor'])}, {machine['cpu_count']} "
        f"cores shared with other jobs; torch {machine['torch']}; commit(s) "
        f"{', '.join(commits)}. A step is sampling + forward + loss + backward + fused Adam "
        f"at batch {records[0]['batch_size']}, median over "
        f"{records[0]['rounds']} alternating rounds per backend; decode is the dropless "
        f"forward of {CHUNK_VOXELS} voxels. Load: the 1-minute load average before the first "
        "and after the last run of a row (2 cores: above 2 means waiting for a core).",
        "",
        "| device | volume | ratio | experts / top-k | width | threads | native s/step "
        "| Tutel s/step | Tutel / native | native decode s | Tutel decode s | load |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        m, res = r["model"], r["results"]
        lines.append(
            f"| {r['device']} | {r['volume']} | {r['ratio']:g}x | {m['num_experts']} / "
            f"{m['top_k']} | {m['hidden_features']} | {r['threads']} | "
            f"{res['native']['median_step_s']:.4f} | {res['tutel']['median_step_s']:.4f} | "
            f"**{r['tutel_over_native_step']:.2f}** | "
            f"{res['native']['median_decode_chunk_s']:.4f} | "
            f"{res['tutel']['median_decode_chunk_s']:.4f} | "
            f"{r['load_average_1min'][0]:.1f}-{r['load_average_1min'][-1]:.1f} |"
        )
    lines += [
        "",
        f"Reading: Tutel's step took {min(ratios):.2f}-{max(ratios):.2f}x the native one; "
        f'it was faster in {faster} of {len(ratios)} rows. `backend="auto"` uses these '
        "numbers (`_AUTO` in `src/napari_moec/nn/tutel_backend.py`).",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--volumes", nargs="*", default=list(VOLUMES), choices=list(VOLUMES))
    parser.add_argument("--ratios", nargs="*", type=float, default=[256.0])
    parser.add_argument("--sweep", nargs="*", default=["hipct:16", "macaque:256"])
    parser.add_argument("--experts", nargs="*", type=int, default=[8, 12, 16])
    parser.add_argument("--top-k", nargs="*", type=int, default=[1, 2])
    parser.add_argument("--threads", nargs="*", type=int, default=[1, 2])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=16384)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--decode-reps", type=int, default=3)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--markdown", type=Path, default=MARKDOWN)
    parser.add_argument("--markdown-only", action="store_true")
    parser.add_argument("--skip-done", action="store_true", help="keep JSONs already there")
    args = parser.parse_args()
    if not args.markdown_only:
        if not tutel_importable():
            raise SystemExit("Tutel does not import here: see tutel_backend.INSTALL_HINT")
        for name, ratio, arch in jobs(args):
            volume = load_volume(name)
            model = plan(volume.shape, volume.dtype, ratio, arch=arch).model
            for threads in args.threads:
                path = args.out / file_name(args.device, name, ratio, model, threads)
                if args.skip_done and path.exists():
                    continue
                record = run_pair(name, volume, ratio, arch, args, threads)
                record["provenance"] = provenance(args.device)
                record["tutel_commit"] = TUTEL_COMMIT
                write_json(path, record)
                print(
                    f"{path.name}: native {record['results']['native']['median_step_s']:.4f} "
                    f"s/step, tutel {record['results']['tutel']['median_step_s']:.4f} "
                    f"({record['tutel_over_native_step']:.2f}x), load {load_average()}",
                    flush=True,
                )
    args.markdown.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.markdown.with_suffix(".md.tmp")
    tmp.write_text(markdown(args.out))
    tmp.replace(args.markdown)


if __name__ == "__main__":
    main()
