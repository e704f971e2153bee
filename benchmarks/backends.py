"""MoE backends: training step time (and dropless decode time) of the native routing against
Tutel's (``napari_moec.families.siren.tutel_backend``), same network, same seed, same device.

Two sets of networks:

* the shared volumes' default networks: ``--volumes`` at ``--ratios`` (default 256x, the
  library's default ratio) with the default architecture (the budget picks experts and width);
* an expert sweep: ``--sweep VOLUME:RATIO`` with ``--experts`` (8-16) x ``--top-k`` (1, 2),
  the width again sized to the budget.

Each (network, threads) pair trains both backends side by side through ``Compressor.train``
(sampling, forward, loss, backward, fused Adam: the real step, router freeze at 60% of the
schedule included): step i of one, then step i of the other, the order alternating, so both
see the same load from the other jobs of a shared machine. After ``--warmup`` steps, each of
``--steps`` steps is timed in wall seconds and in CPU seconds of this process (all its
threads): CPU time hardly depends on how many other jobs wait for the cores, so it is the
fairer comparison on a busy machine; wall time is what a user waits for. Reported: medians,
the fastest wall step, and the median of the paired per-step wall ratios. Decode is the
dropless forward of one CPU decoding chunk (``CHUNK_VOXELS['cpu']``, ``--decode-reps``,
median). The 1-minute
load average before and after each pair is in its JSON. One JSON per (network, threads)
under ``--out``; ``--markdown`` is rebuilt from every JSON there (``--markdown-only`` without
measuring).

    python benchmarks/backends.py --threads 1 2 --sweep hipct:16 --experts 8 12 16
    python benchmarks/backends.py --threads 1 2 --volumes --sweep macaque:256 --experts 8 16
    python benchmarks/backends.py --markdown-only
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from _common import ROOT, VOLUMES, load_volume, provenance, write_json
from napari_moec import ArchConfig, Compressor, Progress, RunConfig, TrainConfig
from napari_moec.decode import CHUNK_VOXELS
from napari_moec.families.siren.tutel_backend import TUTEL_COMMIT, tutel_importable
from napari_moec.plan import plan

OUT = ROOT / "docs" / "benchmarks" / "data" / "backends"
MARKDOWN = ROOT / "docs" / "benchmarks" / "backends.md"
BACKENDS = ("native", "tutel")


def load_average() -> float:
    return round(os.getloadavg()[0], 2)


def compressor(volume, ratio, arch, backend, args, threads) -> Compressor:
    return Compressor(
        volume,
        ratio,
        arch=arch,
        train=TrainConfig(steps=args.warmup + args.steps, batch_size=args.batch_size, seed=0),
        run=RunConfig(device=args.device, threads=threads, backend=backend),
    )


def timed(call, device: torch.device):
    """``call()`` and its wall and CPU (all threads of this process) seconds."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = call()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def run_pair(name, volume, ratio, arch, args, threads) -> dict:
    """Both backends on one network, trained side by side: step i of one, then step i of the
    other (the order alternating), so both see the same load from other jobs."""
    torch.set_num_threads(threads)
    comps = {b: compressor(volume, ratio, arch, b, args, threads) for b in BACKENDS}
    gens = {b: comps[b].train() for b in BACKENDS}
    for gen in gens.values():
        next(gen)  # Started
    times = {b: {"wall": [], "cpu": []} for b in BACKENDS}
    models = {}
    loads = [load_average()]
    for step in range(args.warmup + args.steps + 1):
        for backend in BACKENDS if step % 2 == 0 else BACKENDS[::-1]:
            try:
                event, wall, cpu = timed(lambda b=backend: next(gens[b]), comps[backend].device)
            except StopIteration as done:
                models[backend] = done.value[0]
                continue
            assert isinstance(event, Progress)
            if step >= args.warmup:
                times[backend]["wall"].append(wall)
                times[backend]["cpu"].append(cpu)
    coords = torch.rand(CHUNK_VOXELS["cpu"], volume.ndim, device=comps["native"].device) * 2 - 1
    decode = {b: {"wall": [], "cpu": []} for b in BACKENDS}
    with torch.no_grad():
        for rep in range(args.decode_reps + 1):
            for backend in BACKENDS if rep % 2 == 0 else BACKENDS[::-1]:
                model = models[backend].eval()
                _, wall, cpu = timed(lambda m=model: m.decode(coords), coords.device)
                if rep:  # the first is a warm-up
                    decode[backend]["wall"].append(wall)
                    decode[backend]["cpu"].append(cpu)
    loads.append(load_average())

    mcfg = comps["native"].model_config
    record = {"volume": name, "ratio": ratio, "threads": threads, "device": args.device}
    record["batch_size"], record["timed_steps"] = args.batch_size, args.steps
    record["model"] = {
        "num_experts": mcfg.num_experts,
        "top_k": mcfg.top_k,
        "hidden_features": mcfg.hidden_features,
        "gate_hidden": mcfg.gate_hidden,
        "expert_layers": mcfg.expert_layers,
    }
    results = {}
    for backend in BACKENDS:
        results[backend] = {
            "step_wall_s": times[backend]["wall"],
            "step_cpu_s": times[backend]["cpu"],
            "decode_chunk_wall_s": decode[backend]["wall"],
            "decode_chunk_cpu_s": decode[backend]["cpu"],
            "median_step_wall_s": statistics.median(times[backend]["wall"]),
            "min_step_wall_s": min(times[backend]["wall"]),
            "median_step_cpu_s": statistics.median(times[backend]["cpu"]),
            "median_decode_chunk_wall_s": statistics.median(decode[backend]["wall"]),
        }
    record["results"] = results
    # Paired ratios, step by step: each pair ran back to back under the same load.
    paired = [t / n for t, n in zip(times["tutel"]["wall"], times["native"]["wall"], strict=True)]
    record["tutel_over_native_step_wall"] = round(statistics.median(paired), 3)
    record["tutel_over_native_step_cpu"] = round(
        results["tutel"]["median_step_cpu_s"] / results["native"]["median_step_cpu_s"], 3
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


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


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
    machine = records[0]["provenance"]["machine"]
    commands = sorted({r["provenance"]["command"] for r in records})
    commits = sorted({r["provenance"]["commit"][:7] for r in records})
    lines = [
        "# MoE backends: native vs Tutel",
        "",
        "Training step and decode time of the native MoE routing (gathers with known inverses, "
        "one `baddbmm` per expert layer) against Tutel's (`extract_critical` + `fast_encode` / "
        f"`fast_decode`, commit `{TUTEL_COMMIT[:12]}`): same network, same seed, same device, "
        "trained side by side step by step. Both compute the same function "
        "(tests/test_tutel.py); this is only about speed. Generated by "
        "`benchmarks/backends.py` from `docs/benchmarks/data/backends/*.json`.",
        "",
        "Commands: " + "; ".join(f"`{c}`" for c in commands),
        "",
        f"Machine: {machine.get('cpu_model', machine['processor'])}, {machine['cpu_count']} "
        f"cores shared with other jobs; torch {machine['torch']}; commit(s) "
        f"{', '.join(commits)}. A step is sampling + forward + loss + backward + fused Adam at "
        f"batch {records[0]['batch_size']}, {records[0]['timed_steps']} timed steps per "
        "backend after a warm-up. *wall*: median milliseconds per step; *CPU*: median CPU "
        "milliseconds of all the process's threads per step, which depends little on the "
        "load; ratios: Tutel / native (wall: median of the paired per-step ratios). Decode: "
        f"median wall ms of a dropless forward of {CHUNK_VOXELS['cpu']} voxels. Load: 1-minute "
        "load "
        "average before and after the row (2 cores: above 2, jobs wait for a core).",
        "",
        "| device | volume | ratio | experts / top-k | width | threads | native wall | Tutel wall "
        "| Tutel/native wall | native CPU | Tutel CPU | Tutel/native CPU | decode native / Tutel "
        "| load |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        m, nat, tut = r["model"], r["results"]["native"], r["results"]["tutel"]
        lines.append(
            f"| {r['device']} | {r['volume']} | {r['ratio']:g}x | {m['num_experts']} / "
            f"{m['top_k']} | {m['hidden_features']} | {r['threads']} | "
            f"{_ms(nat['median_step_wall_s'])} | {_ms(tut['median_step_wall_s'])} | "
            f"{r['tutel_over_native_step_wall']:.2f} | {_ms(nat['median_step_cpu_s'])} | "
            f"{_ms(tut['median_step_cpu_s'])} | **{r['tutel_over_native_step_cpu']:.2f}** | "
            f"{_ms(nat['median_decode_chunk_wall_s'])} / "
            f"{_ms(tut['median_decode_chunk_wall_s'])} | "
            f"{r['load_average_1min'][0]:.1f}-{r['load_average_1min'][-1]:.1f} |"
        )
    lines += ["", "Summary (Tutel / native, range over the rows):", ""]
    for device in sorted({r["device"] for r in records}):
        for threads in sorted({r["threads"] for r in records if r["device"] == device}):
            rows = [r for r in records if r["device"] == device and r["threads"] == threads]
            cpu = [r["tutel_over_native_step_cpu"] for r in rows]
            wall = [r["tutel_over_native_step_wall"] for r in rows]
            lines.append(
                f"- {device}, {threads} thread(s), {len(rows)} networks: CPU time "
                f"{min(cpu):.2f}-{max(cpu):.2f} (median {statistics.median(cpu):.2f}, Tutel "
                f"cheaper in {sum(x < 1 for x in cpu)}); wall {min(wall):.2f}-{max(wall):.2f} "
                f"(median {statistics.median(wall):.2f}, Tutel faster in "
                f"{sum(x < 1 for x in wall)})."
            )
    lines += [
        "",
        "Rows whose load is above the machine's core count measure contention as much as the "
        "backends: a multi-threaded step waits until all its threads get a core, and OpenMP "
        "threads spin while they wait, which inflates wall and CPU time alike. Trust a rerun "
        'on an idle machine over such rows. `backend="auto"` follows these numbers '
        "(`_measured_faster` in `src/napari_moec/families/siren/tutel_backend.py`).",
    ]
    if not any(r["device"].startswith("cuda") for r in records):
        lines += [
            "",
            "No GPU rows yet: measure with `python benchmarks/backends.py --device cuda "
            "--threads 1` on a machine whose Tutel was built with CUDA; until then `auto` "
            "keeps native on GPUs.",
        ]
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--volumes", nargs="*", default=list(VOLUMES), choices=list(VOLUMES))
    parser.add_argument("--ratios", nargs="*", type=float, default=[256.0])
    parser.add_argument("--sweep", nargs="*", default=["hipct:16"])
    parser.add_argument("--experts", nargs="*", type=int, default=[8, 12, 16])
    parser.add_argument("--top-k", nargs="*", type=int, default=[1, 2])
    parser.add_argument("--threads", nargs="*", type=int, default=[1, 2])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=16384)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=16)
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
                res = record["results"]
                print(
                    f"{path.name}: wall native {_ms(res['native']['median_step_wall_s'])} ms, "
                    f"tutel {_ms(res['tutel']['median_step_wall_s'])} ms "
                    f"({record['tutel_over_native_step_wall']:.2f}x), CPU "
                    f"{record['tutel_over_native_step_cpu']:.2f}x, load {load_average()}",
                    flush=True,
                )
    args.markdown.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.markdown.with_suffix(".md.tmp")
    tmp.write_text(markdown(args.out))
    tmp.replace(args.markdown)


if __name__ == "__main__":
    main()
