"""Tiled compression (napari_moec.compress_tiled) on a local Dask cluster: throughput, scaling,
peak memory per worker, PSNR and seam penalty, rate allocation; and the docs made from them.

    python benchmarks/tiled.py run --volume macaque --ratio 256 --tile 32 --steps 300 --tag t32
    python benchmarks/tiled.py run --volume macaque-mirror --shape 512,512,640 --ratio 1024 \\
        --workers 2 --memory-limit 600MB --steps 100 --tag big-2w
    python benchmarks/tiled.py figure --volume macaque --ratio 256 --steps 300
    python benchmarks/tiled.py report          # docs/benchmarks/tiled.md from the JSONs

Volumes: the shared real data (``_common.VOLUMES``), optionally cropped (``--crop``), and
``<name>-mirror`` with ``--shape``: the volume mirrored (symmetric reflection, as
``numpy.pad(mode="symmetric")``) to that shape, built slab by slab into a ``.npy`` under
``--work`` (never committed) and read by the workers through a memory map, so a volume larger
than a worker's memory limit is compressed as the real thing would be.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from _common import ROOT, load_volume, provenance, write_json

DATA_OUT = ROOT / "docs" / "benchmarks" / "data" / "tiled"
WORK = Path("/tmp/moec-tiled-bench")


# -- volumes ---------------------------------------------------------------------------------
def _mirror_index(n_target: int, n_source: int) -> np.ndarray:
    """Symmetric reflection of 0..n_target-1 onto 0..n_source-1 (0 1 .. n-1 n-1 .. 1 0 0 1 ..)."""
    period = np.arange(n_target) % (2 * n_source)
    return np.where(period < n_source, period, 2 * n_source - 1 - period)


def _crop_slices(crop: str) -> tuple[slice, ...]:
    return tuple(slice(*map(int, p.split(":"))) for p in crop.split(","))


def build_volume(args) -> tuple[Path, np.ndarray | None]:
    """The source path (.npy) of the run, built if needed; and the array when it is small."""
    name = args.volume.removesuffix("-mirror")
    source = load_volume(name)
    if args.crop and not args.volume.endswith("-mirror"):
        source = source[_crop_slices(args.crop)]
    if not args.volume.endswith("-mirror"):
        crop = (args.crop or "full").replace(":", "-").replace(",", "_")
        path = Path(args.work) / f"{name}_{crop}.npy"
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            np.save(path, np.ascontiguousarray(source))
        return path, source
    shape = tuple(int(n) for n in args.shape.split(","))
    path = Path(args.work) / f"{name}_mirror_{'x'.join(map(str, shape))}.npy"
    if args.crop:  # a crop of the mirrored volume (the source is mirrored whole first)
        crop = args.crop.replace(":", "-").replace(",", "_")
        cropped = path.with_name(f"{path.stem}_{crop}.npy")
        if not cropped.exists():
            whole = build_volume(argparse.Namespace(**{**vars(args), "crop": None}))[0]
            region = np.load(whole, mmap_mode="r")[_crop_slices(args.crop)]
            np.save(cropped.with_suffix(".tmp.npy"), np.ascontiguousarray(region))
            cropped.with_suffix(".tmp.npy").replace(cropped)
        return cropped, None
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        index = [_mirror_index(n, m) for n, m in zip(shape, source.shape, strict=True)]
        out = np.lib.format.open_memmap(path.with_suffix(".tmp.npy"), "w+", source.dtype, shape)
        plane = np.ix_(index[1], index[2])
        for z in range(shape[0]):
            out[z] = source[index[0][z]][plane]
        out.flush()
        del out
        path.with_suffix(".tmp.npy").replace(path)
    return path, None


# -- one run ----------------------------------------------------------------------------------
def run(args) -> dict:
    from napari_moec.config import ArchConfig, RunConfig, TrainConfig
    from napari_moec.tiled.cluster import ClusterShape, connect
    from napari_moec.tiled.events import TiledStarted
    from napari_moec.tiled.memory import worker_peak
    from napari_moec.tiled.runner import TiledCompressor

    path, _ = build_volume(args)
    dest = Path(args.work) / f"{args.tag}.ome.zarr"
    train = TrainConfig(
        steps=args.steps, batch_size=args.batch_size, time_limit=args.time_limit, seed=args.seed
    )
    arch = None if args.experts is None else ArchConfig(num_experts=args.experts)
    # The engine's own local cluster (its workers' environment, pinning), sized here.
    shape = ClusterShape(args.workers, memory_limit=args.memory_limit, pin=args.pin)
    client, _ = connect(shape=shape)
    with client.cluster, client:
        job = TiledCompressor(
            path, dest, args.ratio, tile=args.tile if args.tile == "auto" else int(args.tile),
            margin=args.margin if args.margin == "auto" else int(args.margin),
            allocation=args.allocation, exponent=args.exponent, train=train, arch=arch,
            client=client, overwrite=True,
            run=RunConfig(device="cpu", threads=args.threads),
        )  # fmt: skip
        events, started_at, start = job.run(), None, time.monotonic()
        while True:
            try:
                event = next(events)
            except StopIteration as done:
                report = done.value
                break
            if isinstance(event, TiledStarted):
                started_at, plan_event = time.monotonic(), event
        end = time.monotonic()
        peaks = client.run(worker_peak)  # over the tiles' resets of the kernel's mark
    results = list(job.results.values())
    net = [r for r in results if r.kind == "network"]
    voxels = math.prod(report.shape)
    record = {
        "tag": args.tag,
        "volume": args.volume,
        "crop": args.crop,
        "experts": args.experts,
        "time_limit": args.time_limit,
        "seed": args.seed,
        "shape": list(report.shape),
        "dtype": report.dtype,
        "original_bytes": report.original_bytes,
        "ratio_target": args.ratio,
        "tile": list(report.tile),
        "margin": list(report.margin),
        "allocation": args.allocation,
        "exponent": job.exponent if args.allocation == "difficulty" else None,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "workers": args.workers,
        "threads_per_tile": args.threads,
        "memory_limit": args.memory_limit,
        "report": report.to_dict(),
        "scan_and_plan_seconds": round(started_at - start, 2),
        "compress_seconds": round(end - started_at, 2),
        "voxels_per_second": round(voxels / (end - start), 1),
        "network_tiles": len(net),
        "pinned": args.pin,
        "tile_seconds": [round(r.seconds, 3) for r in net],
        "tile_wall_seconds": [round(r.wall_seconds, 3) for r in net],
        "overhead_share": round(report.overhead_share, 4),
        "tile_steps": [r.steps for r in net],
        "peak_anon_per_tile": [r.peak_anon for r in net],
        "baseline_anon_per_tile": [r.baseline_anon for r in net],
        "peak_file_per_tile": [r.peak_file for r in net],
        "peak_resident_per_tile": [r.peak_resident for r in net],
        "baseline_resident_per_tile": [r.baseline_resident for r in net],
        "tile_index": [list(r.index) for r in net],
        "tile_budget": [r.payload_budget for r in net],
        "tile_widths": [r.hidden for r in net],
        "tile_bytes": [r.nbytes for r in net],
        "tile_psnr": [
            round(10 * math.log10(r.voxels / r.sse), 3) if r.sse > 0 else None for r in net
        ],
        "tile_flops_train": [train_flops(plan_event, r, args) for r in net],
        "peak_rss_per_worker": sorted(peaks.values()),
        **provenance("cpu"),
    }
    record.update(_decoded_psnr(dest, path))
    write_json(Path(args.out) / f"{args.tag}.json", record)
    if not args.keep:
        import shutil

        shutil.rmtree(dest, ignore_errors=True)
    print(json.dumps({k: record[k] for k in ("tag", "voxels_per_second", "compress_seconds",
                                              "peak_rss_per_worker")}), report)  # fmt: skip
    return record


def _decoded_psnr(dest: Path, path: Path) -> dict:
    """The store decoded whole by its reader against the original, PSNR over the original's
    range: the number compared with the codecs (the report's ``psnr`` sums the tiles'
    estimates from samples), and the decode's wall time (threads of this process)."""
    from napari_moec.metrics import psnr
    from napari_moec.tiled.reader import open_tiled

    original = np.load(path, mmap_mode="r")  # the run's volume (cropped, mirrored)
    start = time.perf_counter()
    decoded = open_tiled(dest).decode()
    seconds = time.perf_counter() - start
    return {"psnr_decoded": round(psnr(np.asarray(original), decoded), 3),
            "decode_seconds": round(seconds, 2)}  # fmt: skip


def forward_flops(hidden: int, experts: int, in_features: int = 3, layers: int = 3) -> int:
    """Multiply-adds x 2 of one point through a MoE SIREN (top-1): encoder, router, expert
    layers, decoder."""
    gate = 0 if experts == 1 else max(2, hidden // 2)
    router = (hidden * gate + gate * gate + gate * experts) if experts > 1 else 0
    return 2 * (in_features * hidden + router + layers * hidden * hidden + hidden)


def train_flops(started, result, args) -> float:
    """Training FLOPs of a tile: forward + backward (x3) for every point of every step."""
    return 3.0 * args.steps * args.batch_size * forward_flops(result.hidden, result.experts)


# -- seams: the same voxels on a tile face and inside a tile ---------------------------------
def seams(args) -> None:
    """Seam penalty with the content held fixed: tiling A of a crop and tiling B of the crop
    shifted by half a tile on every axis. A's face voxels lie mid-tile in B, and B's in A, so
    ``PSNR_B(faces of A) - PSNR_A(faces of A)`` (and the same for B) is what being on a face
    costs those voxels; the face-vs-interior number of a single run mixes in that faces and
    interiors hold different anatomy."""
    from napari_moec.tiled.reader import open_tiled

    starts = [int(p.split(":")[0]) for p in args.crop.split(",")]
    stops = [int(p.split(":")[1]) for p in args.crop.split(",")]
    tile = int(args.tile)
    shift = tile // 2
    crops = {"A": args.crop, "B": ",".join(f"{a + shift}:{b + shift}" for a, b in
                                           zip(starts, stops, strict=True))}  # fmt: skip
    if args.volume.endswith("-mirror"):  # the whole mirrored volume, memory-mapped
        whole = build_volume(argparse.Namespace(**{**vars(args), "crop": None}))[0]
        full = np.load(whole, mmap_mode="r")
    else:
        full = load_volume(args.volume)
    base_tag, base_crop, decoded, records = args.tag, args.crop, {}, {}
    for name, crop in crops.items():
        args.crop, args.tag, args.keep = crop, f"{base_tag}-{name}", True
        records[name] = run(args)
        decoded[name] = open_tiled(Path(args.work) / f"{args.tag}.ome.zarr").decode()
    args.crop, args.tag = base_crop, base_tag
    # the overlap, in A's coordinates
    lo = [shift] * 3
    hi = [b - a for a, b in zip(starts, stops, strict=True)]
    original = full[tuple(slice(a + s, a + h) for a, s, h in zip(starts, lo, hi, strict=True))]
    a_part = decoded["A"][tuple(slice(s, h) for s, h in zip(lo, hi, strict=True))]
    b_part = decoded["B"][tuple(slice(0, h - s) for s, h in zip(lo, hi, strict=True))]
    span = float(full.max() - full.min())
    faces = {}
    length = [b - a for a, b in zip(starts, stops, strict=True)]
    for name, offset in (("A", shift), ("B", 0)):
        # overlap coordinate c lies on a face of tiling `name` when c + offset is one of the
        # two voxel layers meeting at one of its internal tile boundaries (not a crop edge)
        masks = []
        for n, size in zip(original.shape, length, strict=True):
            k = np.arange(n) + offset
            internal = [b for b in range(tile, size, tile)]
            masks.append(np.isin(k, internal) | np.isin(k + 1, internal))
        faces[name] = masks[0][:, None, None] | masks[1][None, :, None] | masks[2][None, None, :]

    def psnr(test, mask):
        err = ((test.astype(np.float64) - original) / span) ** 2
        return 10 * math.log10(1 / err[mask].mean())

    result = {}
    for name, own, other in (("A", a_part, b_part), ("B", b_part, a_part)):
        mask = faces[name] & ~faces["B" if name == "A" else "A"]
        result[name] = {"voxels": int(mask.sum()), "psnr_on_face": psnr(own, mask),
                        "psnr_mid_tile": psnr(other, mask)}  # fmt: skip
        result[name]["penalty"] = result[name]["psnr_mid_tile"] - result[name]["psnr_on_face"]
    record = {
        "tag": base_tag, "kind": "seams", "volume": args.volume, "crops": crops,
        "tile": tile, "margin": records["A"]["margin"], "ratio_target": args.ratio,
        "steps": args.steps, "batch_size": args.batch_size, "shifted": result,
        "penalty_db": (result["A"]["penalty"] + result["B"]["penalty"]) / 2,
        "face_vs_interior_db": [records[n]["report"]["seam_penalty"] for n in "AB"],
        "psnr": [records[n]["report"]["psnr"] for n in "AB"], **provenance("cpu"),
    }  # fmt: skip
    write_json(Path(args.out) / f"{base_tag}.json", record)
    print(json.dumps(result), record["penalty_db"])


# -- figure: a slice across a tile corner -----------------------------------------------------
def figure(args) -> None:
    from PIL import Image, ImageDraw

    from napari_moec.tiled.reader import open_tiled

    args.keep = True
    saved = Path(args.out) / f"{args.tag}.json"
    if (Path(args.work) / f"{args.tag}.ome.zarr").exists() and saved.exists():
        record = json.loads(saved.read_text())  # a kept store of an earlier run (--keep)
    else:
        record = run(args)
    path, volume = build_volume(args)
    if volume is None:  # a mirrored volume: memory-mapped
        volume = np.load(path, mmap_mode="r")
    store = open_tiled(Path(args.work) / f"{args.tag}.ome.zarr")
    t = store.spec.grid.tile
    # a plane on a z tile face near the middle: the YX tile corners all cross it
    z = (volume.shape[0] // 2 // t[0]) * t[0] if args.z is None else args.z
    decoded = store.decode(roi=f"{z}:{z + 1},:,:")[0]
    original = volume[z].astype(np.float64)
    # display window: 0 to the 99.5th percentile of the slice (a few bright voxels set the max)
    lo, hi = float(volume.min()), float(np.percentile(original, 99.5))
    gray = lambda a: np.clip((a - lo) / (hi - lo) * 255, 0, 255).astype(np.uint8)  # noqa: E731
    error = np.abs(decoded.astype(np.float64) - original)
    panels = [gray(original), gray(decoded), gray(error * 4 + lo)]
    scale = 2
    h, w = original.shape
    canvas = Image.new("RGB", (3 * w * scale + 20, h * scale + 24), "white")
    draw = ImageDraw.Draw(canvas)
    titles = [f"original, z={z}", f"tiled MoEC {record['report']['ratio']:.0f}x, tiles {t[1]}",
              "|error| x4"]  # fmt: skip
    for k, (panel, title) in enumerate(zip(panels, titles, strict=True)):
        image = Image.fromarray(panel).resize((w * scale, h * scale), Image.NEAREST).convert("RGB")
        x0 = k * (w * scale + 10)
        canvas.paste(image, (x0, 24))
        for y in range(t[1], h, t[1]):  # tile boundaries, dashed
            for x in range(0, w * scale, 8):
                draw.line([(x0 + x, 24 + y * scale), (x0 + x + 3, 24 + y * scale)], "red")
        for x in range(t[2], w, t[2]):
            for y in range(0, h * scale, 8):
                draw.line([(x0 + x * scale, 24 + y), (x0 + x * scale, 24 + y + 3)], "red")
        draw.text((x0 + 4, 4), title, fill="black")
    out = ROOT / "docs" / "images" / "tiled-corner.png"
    canvas.save(out)
    print(out)


# -- report -----------------------------------------------------------------------------------
def report(args) -> None:
    """docs/benchmarks/tiled.md from every JSON in ``--out``."""
    records = [json.loads(p.read_text()) for p in sorted(Path(args.out).glob("*.json"))]
    baselines = [r for r in records if r.get("kind") == "baseline"]
    records = [r for r in records if r.get("kind") != "baseline"]
    runs = [r for r in records if r.get("kind") != "seams"]
    lines = ["# Tiled compression benchmarks", "", _REPORT_INTRO, ""]
    lines += _grid([r for r in runs if r["tag"].startswith(GRID_TAGS)], baselines)
    lines += _tile_sweep([r for r in runs if r["tag"].startswith("sweep-")])
    lines += _seams([r for r in records if r.get("kind") == "seams"])
    lines += _ratios([r for r in runs if r["tag"].startswith("ratio-")
                      or r["tag"] == "alloc-macaque-r256-difficulty"])  # fmt: skip
    lines += _allocation([r for r in runs if r["tag"].startswith("alloc-")])
    lines += _big([r for r in runs if r["tag"].startswith("big-")])
    lines += ["## Commands and machines", ""]
    for r in records + baselines:
        m = r["machine"]
        dirty = " (dirty)" if r["dirty"] else ""
        lines.append(f"- `{r['command']}`: commit {r['commit'][:10]}{dirty}, "
                     f"{m.get('cpu_model', m['processor'])}, {m['cpu_count']} CPUs, load "
                     f"{m['load_average_1min']} at the end, {r['date']}")  # fmt: skip
    out = ROOT / "docs" / "benchmarks" / "tiled.md"
    out.write_text("\n".join(lines) + "\n")
    print(out)


_REPORT_INTRO = (
    "Made by `python benchmarks/tiled.py report` from `docs/benchmarks/data/tiled/*.json`; every "
    "run's command is listed at the end. All runs are on the shared 2-core CPU machine under "
    "the load of other jobs (the 1-minute load average at each run's end is listed: 1-10 on 2 "
    "cores), with short per-tile schedules (`--steps`, batch 4096 points) so that they fit: "
    "PSNRs are those of short schedules, and seconds swing with the load. PSNR is over the "
    "volume's data range, of the store as any reader decodes it. Bytes are every byte of the "
    "store (chunks + metadata). The runs wrote their JSON to a scratch folder (the `--out` of "
    "the commands below), copied to `docs/benchmarks/data/tiled/`; the volumes and stores live "
    "in `--work` (`/tmp/moec-tiled-bench`) and are not committed."
)


def _psnr(x) -> str:
    return "-" if x is None else f"{x:.2f}"


def _face(report: dict) -> str:
    """face − interior (dB) of a run; "-" when it has no tile faces (one tile)."""
    penalty = report["seam_penalty"]
    return "-" if penalty is None else f"{-penalty:+.2f}"


def _tile_sweep(runs) -> list[str]:
    if not runs:
        return []
    ratios = sorted({r["ratio_target"] for r in runs})
    out = ["## Tile size", "",
           "Same crop, same per-tile schedule; only the tile edge changes (margin: auto).", "",
           "| ratio | tile | margin | tiles | mean bytes per tile | PSNR (dB) | face − interior "
           "(dB) | wall s (2 workers) |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for ratio in ratios:
        for r in sorted((r for r in runs if r["ratio_target"] == ratio), key=lambda r: r["tile"]):
            rep = r["report"]
            per = rep["original_bytes"] / ratio / rep["total_tiles"]
            edge, margin = max(r["tile"]), max(r["margin"])
            out.append(f"| {ratio:g}x | {edge} | {margin} | {rep['total_tiles']} | {per:.0f} | "
                       f"{_psnr(rep['psnr'])} | {_face(rep)} | "
                       f"{r['compress_seconds'] + r['scan_and_plan_seconds']:.0f} |")  # fmt: skip
    crop = runs[0]["crop"]
    steps = runs[0]["steps"]
    return [*out, "", f"Volume: macaque T1 (float32) crop `{crop}`, {steps} steps per tile.", ""]


def _seams(runs) -> list[str]:
    if not runs:
        return []
    out = ["## Seams", "",
           "Each row is two runs: tiling A of the crop and tiling B of the crop shifted by half a "
           "tile on every axis. The voxel layers on A's internal tile faces lie mid-tile in B (and "
           "B's in A), so *shifted penalty* = PSNR of those voxels mid-tile − PSNR on the face, "
           "with the anatomy held fixed (mean of A's and B's). *Face − interior* is the single-run "
           "measure (the voxels on faces against every other voxel of the network tiles), which "
           "also compares different anatomy.", "",
           "| ratio | tile | margin | PSNR A / B (dB) | face − interior A / B (dB) | shifted "
           "penalty (dB) |", "|---|---|---|---|---|---|"]  # fmt: skip
    for r in sorted(runs, key=lambda r: (r["ratio_target"], r["tile"], r["margin"][0])):
        fi = " / ".join(f"{-x:+.2f}" for x in r["face_vs_interior_db"])
        out.append(f"| {r['ratio_target']:g}x | {r['tile']} | {r['margin'][0]} | "
                   f"{' / '.join(_psnr(p) for p in r['psnr'])} | {fi} | "
                   f"{r['penalty_db']:+.2f} |")  # fmt: skip
    return [*out, ""]


def _ratios(runs) -> list[str]:
    if not runs:
        return []
    out = ["## Ratios", "",
           "The whole macaque T1 (128x206x168 float32, 17.7 MB; 80 % of it background), tile and "
           "margin \"auto\", difficulty allocation, 300 steps per tile.", "",
           "| ratio | tile / margin | tiles (network / constant / empty) | store bytes | ratio "
           "kept | PSNR (dB) | face − interior (dB) | wall s (2 workers) |",
           "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in sorted(runs, key=lambda r: r["ratio_target"]):
        rep = r["report"]
        wall = r["compress_seconds"] + r["scan_and_plan_seconds"]
        out.append(f"| {r['ratio_target']:g}x | {max(r['tile'])} / {max(r['margin'])} | "
                   f"{rep['network_tiles']} / {rep['constant_tiles']} / {rep['empty_tiles']} | "
                   f"{rep['store_bytes']} | {rep['ratio']:.1f}x | {_psnr(rep['psnr'])} | "
                   f"{_face(rep)} | {wall:.0f} |")  # fmt: skip
    return [
        *out,
        "",
        "For scale, one network on the whole volume (`.moec`, README): 37.81 dB at "
        "256x and 37.98 dB at 1024x after 2000 steps (693 s and 177 s on one thread).",
        "",
    ]


def _allocation(runs) -> list[str]:
    if not runs:
        return []
    out = ["## Rate allocation", "",
           "The same volume, ratio and schedule; only the split of the budget changes: *uniform* "
           "(every tile the same share; the empty tiles' shares go unused, so its store is "
           "smaller), *equal* (all bytes to the tiles that need a network, by voxels), "
           "*difficulty* (`voxels · difficulty^p`). Equal and difficulty stores have the same "
           "bytes.", "",
           "| volume | ratio | allocation | bytes | PSNR (dB) | network tiles | width "
           "min/median/max |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in sorted(runs, key=lambda r: (r["ratio_target"], r["steps"], r["allocation"],
                                         r.get("exponent") or 0.8)):  # fmt: skip
        w = np.asarray(r["tile_widths"] or [0])
        mode = r["allocation"]
        if mode == "difficulty":  # records before the exponent was stored ran with 0.8
            mode += f" (p = {r.get('exponent') or 0.8:g})"
        where = f"`{r['crop']}`" if r["crop"] else "(whole)"
        out.append(f"| {r['volume']} {where}, {r['steps']} steps | "
                   f"{r['ratio_target']:g}x, {max(r['tile'])}³ | {mode} | "
                   f"{r['report']['store_bytes']} | "
                   f"{_psnr(r['report']['psnr'])} | {r['network_tiles']} | "
                   f"{w.min()}/{np.median(w):g}/{w.max()} |")  # fmt: skip
    return [*out, ""]


#: Tags of the grid-family runs (sessions 9 to 12): their own section, with the wall time,
#: memory split and overhead of each tile.
GRID_TAGS = ("s9-grid", "s10-", "s11-", "s12-", "s13-", "s15-", "s27-")
#: A grid step on an H200 (docs/benchmarks/gpu.md, second lease, code e633386): the macaque
#: reflected to 256³, 400,000 voxels a step, 2.46 M latents, one network.
GPU_STEP_S = 0.0174


def _penalty(report: dict) -> str:
    """The face-vs-interior seam number, "-" for a store of one tile (no faces)."""
    penalty = report.get("seam_penalty")
    return "-" if penalty is None or penalty != penalty else f"{penalty:+.2f}"


def _steps(run) -> str:
    """A tile's schedule: its steps, or its training seconds where a time limit set it."""
    if run.get("time_limit") is not None:
        return f"{run['time_limit']:g} s"
    return str(run["steps"])


def _store_psnr(run) -> str:
    """The decoded store's PSNR, or ``~`` and the tiles' estimate where it was not decoded."""
    if run.get("psnr_decoded") is not None:
        return f"{run['psnr_decoded']:.2f}"
    return f"~{run['report']['psnr']:.2f}"


def _grid(runs, baselines) -> list[str]:
    """The grid family's tiled runs: quality, time, the per-tile overhead share, memory by
    kind, scaling of pinned workers, the codecs on the same volumes, and the 45 GB estimate."""
    if not runs:
        return []
    out = ["## The grid family (the default since session 8)", "",
           "Idle machine (nothing else running), one torch thread a tile. *Overhead* is the "
           "share of the tiles' task time that is not training (read, budget fit, encode, "
           "write); memory is per worker, at its peak while a tile ran: *anonymous* (what the "
           "worker holds) and *file-backed* (mapped pages, libraries: the kernel may drop them; "
           "`napari_moec.tiled.memory`). *PSNR* is the store decoded whole against the "
           "original (session 11 on; earlier runs: the sum of the tiles' sampled estimates, "
           "marked ~). Runs before session 11 (s9-, s10-) had Dask's default allocator "
           "setting in the workers, which made a grid step ~3x slower (docs/tiled.md, \"The "
           "workers' allocator\"): their times are not comparable with the s11- ones.", "",
           "| run | volume | ratio (reached) | tile | workers | steps a tile | wall s | PSNR (dB) "
           "| seam penalty (dB) | overhead | anon. peak / tile's own (MB) | file-backed (MB) "
           "| exact peak / tile's own (MB) |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in sorted(runs, key=lambda r: r["tag"]):
        rep = r["report"]
        wall = r["compress_seconds"] + r["scan_and_plan_seconds"]
        shape = "x".join(map(str, r["shape"]))
        pin = ", pinned" if r.get("pinned") else ""
        if "peak_anon_per_tile" in r:
            own = max(a - b for a, b in zip(r["peak_anon_per_tile"], r["baseline_anon_per_tile"],
                                           strict=True))  # fmt: skip
            anon = f"{max(r['peak_anon_per_tile']) / 1e6:.0f} / {own / 1e6:.0f}"
            mapped = f"{max(r['peak_file_per_tile']) / 1e6:.0f}"
            overhead = f"{r['overhead_share']:.0%}"
        else:
            anon = mapped = overhead = "-"
        exact = "-"
        if any(r.get("peak_resident_per_tile", [])):
            pairs = zip(r["peak_resident_per_tile"], r["baseline_resident_per_tile"],
                        strict=True)  # fmt: skip
            own = max(a - b for a, b in pairs)
            exact = f"{max(r['peak_resident_per_tile']) / 1e6:.0f} / {own / 1e6:.0f}"
        out.append(f"| {r['tag']} | {r['volume']} {shape} | {r['ratio_target']:g}x "
                   f"({rep['ratio']:.0f}x) | {r['tile'][0]} | {r['workers']}{pin} | {_steps(r)} "
                   f"| {wall:.1f} | {_store_psnr(r)} | {_penalty(rep)} | {overhead} "
                   f"| {anon} | {mapped} | {exact} |")  # fmt: skip
    out += [
        "",
        "*Exact peak*: the kernel's resident high-water mark (anonymous + file-backed), "
        "reset when each tile starts (session 15 on): the samples of the anonymous "
        "column miss what lives between them.",
        "",
    ]
    for pair, by in _worker_pairs(runs):
        if 1 in by and 2 in by:
            t1, t2 = (by[w]["compress_seconds"] + by[w]["scan_and_plan_seconds"] for w in (1, 2))
            walls = [sum(by[w].get("tile_wall_seconds") or by[w]["tile_seconds"]) for w in (1, 2)]
            what = "task" if "tile_wall_seconds" in by[1] else "training"
            out.append(f"- Scaling, `{pair}`: 1 worker {t1:.1f} s, 2 workers {t2:.1f} s: "
                       f"speed-up {t1 / t2:.2f}, efficiency {t1 / t2 / 2:.2f}. The tiles' {what} "
                       f"seconds summed: {walls[0]:.0f} (1 worker), {walls[1]:.0f} (2 workers): "
                       f"a tile runs {walls[1] / walls[0] - 1:.0%} longer with both cores busy "
                       "(the scheduler, client and nanny processes share them).")  # fmt: skip
    if baselines:
        out += [
            "",
            "The codecs on the same volumes (`benchmarks/tiled_baseline.py`, the "
            "budget `floor(original bytes / ratio)`, PSNR over the data range):",
            "",
            "| volume | ratio | method | bytes | PSNR (dB) | seconds |",
            "|---|---|---|---|---|---|",
        ]
        for b in sorted(baselines, key=lambda b: (b["volume"], b["ratio_target"], b["method"])):
            shape = "x".join(map(str, b["shape"]))
            psnr = f"{b['psnr']:.2f}" if b.get("psnr") is not None else b["status"]
            out.append(f"| {b['volume']} {shape} | {b['ratio_target']:g}x | {b['method']} | "
                       f"{b.get('bytes', '-')} | {psnr} | {b['seconds']:.0f} |")  # fmt: skip
    return [*out, "", *_grid_estimate(runs)]


def _grid_estimate(runs) -> list[str]:
    """A 45 GB uint16 organ on 32 GPU workers, grid tiles, from measured per-tile numbers: the
    H200 step (``GPU_STEP_S``) and the per-tile overhead of the CPU runs (its share of a tile
    measured with 1500-step tiles, scaled as a fixed cost per tile)."""
    timed = [r for r in runs if "tile_wall_seconds" in r]
    if not timed:
        return []
    fixed = sorted(w - t for r in timed for w, t in zip(r["tile_wall_seconds"], r["tile_seconds"],
                                                          strict=True))  # fmt: skip
    median = fixed[len(fixed) // 2]
    voxels = 45e9 / 2
    rows = []
    for edge in (128, 256):
        tiles = math.ceil(voxels / edge**3)
        for steps in (2000, 6000):
            per_tile = steps * GPU_STEP_S + median
            rows.append(f"| {edge}³ | {tiles:,} | {steps} | {per_tile:.0f} | "
                        f"{tiles * per_tile / 32 / 3600:.1f} |")  # fmt: skip
    return [
        "### Paper estimate, grid tiles: a 45 GB uint16 organ on 32 GPUs",
        "",
        f"22.5 G voxels, every tile a network (a real organ's background is cheaper). A step "
        f"costs {GPU_STEP_S * 1e3:.1f} ms on an H200 (measured on a 256³ volume, 400,000 "
        "voxels a step, docs/benchmarks/gpu.md; a step's voxels do not grow with the tile, "
        "so the same time is assumed for 128³ tiles, which is pessimistic: their rate term "
        "covers 8x fewer latents). The fixed cost per tile (read, budget fit, encode, "
        f"write) is the median measured here on one CPU thread, {median:.1f} s, "
        "assumed unchanged on a GPU worker (it is host work).",
        "",
        "| tile | tiles | steps a tile | s a tile | hours on 32 GPUs |",
        "|---|---|---|---|---|",
        *rows,
        "",
        "The 256³ tile is what the GPU lease measured (a 256³ volume at 256x: 41.44 dB "
        "after 1,086 steps in 60 s, budget 32 % unfilled); steps a tile beyond that are "
        "the CPU runs' evidence that quality keeps climbing to ~6,000 steps. Unmeasured "
        "here: a GPU tile through the tiled engine (no GPU this session).",
        "",
    ]


def _worker_pairs(runs) -> list[tuple[str, dict]]:
    """Runs of one setting by worker count: (tag without "-1w"/"-2w", {workers: run}), sorted."""
    pairs: dict = {}
    for r in runs:
        pairs.setdefault(r["tag"].replace("-1w", "").replace("-2w", ""), {})[r["workers"]] = r
    return sorted(pairs.items())


def _big(runs) -> list[str]:
    if not runs:
        return []
    out = ["## A volume larger than a worker's memory", "",
           "| run | shape (GB) | ratio | tile | workers | worker memory limit | peak RSS per "
           "worker (MB) | PSNR (dB) | face − interior (dB) | store bytes | wall s | voxels/s |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in sorted(runs, key=lambda r: r["tag"]):
        rep = r["report"]
        rss = ", ".join(f"{x / 1e6:.0f}" for x in r["peak_rss_per_worker"])
        wall = r["compress_seconds"] + r["scan_and_plan_seconds"]
        shape = "x".join(map(str, r["shape"]))
        out.append(f"| {r['tag']} | {shape} ({rep['original_bytes'] / 1e9:.2f}) | "
                   f"{r['ratio_target']:g}x | {r['tile'][0]} | {r['workers']} | "
                   f"{r['memory_limit']} | {rss} | {_psnr(rep['psnr'])} | "
                   f"{_face(rep)} | {rep['store_bytes']} | {wall:.0f} | "
                   f"{r['voxels_per_second']:,.0f} |")  # fmt: skip
    out += [""]
    for pair, by in _worker_pairs(runs):
        if 1 in by and 2 in by:
            t1 = by[1]["compress_seconds"] + by[1]["scan_and_plan_seconds"]
            t2 = by[2]["compress_seconds"] + by[2]["scan_and_plan_seconds"]
            busy = [sum(by[w]["tile_seconds"]) for w in (1, 2)]
            load = [by[w]["machine"]["load_average_1min"] for w in (1, 2)]
            out.append(f"- Scaling, `{pair}`: 1 worker {t1:.0f} s, 2 workers {t2:.0f} s: speed-up "
                       f"{t1 / t2:.2f}, efficiency {t1 / t2 / 2:.0%}. Training seconds summed "
                       f"over the tiles: {busy[0]:.0f} (1 worker) and {busy[1]:.0f} (2 workers), "
                       f"load {load[0]} and {load[1]} at the ends: when the sum doubles, each "
                       f"worker got half a core (other jobs held the second).")  # fmt: skip
    return [*out, "", *_estimate(runs)]


def _estimate(runs) -> list[str]:
    """Paper estimate: a 45 GB uint16 HiP-CT organ on 32 GPU workers, from measured tiles.

    The measured run gives one CPU worker's useful training rate (FLOP/s, from each tile's
    network and schedule); the organ's tiles are sized as "auto" would size them and trained
    with the default schedule (2000 steps of 16384 points); GPU times are assumptions (no GPU
    was lent to this work), stated in the text."""
    from napari_moec.config import QuantConfig
    from napari_moec.families.siren.family import SIREN_TILES
    from napari_moec.families.siren.sizing import widest_for_payload
    from napari_moec.tiled.tileformat import TileNetworks
    from napari_moec.tiled.tiling import choose_tile

    run = max(runs, key=lambda r: len(r["tile_seconds"]))
    seconds = np.asarray(run["tile_seconds"])
    flops = np.asarray(run["tile_flops_train"])
    cpu_rate = flops.sum() / seconds.sum()  # useful training FLOP/s of one CPU worker
    voxels = 45e9 / 2
    side = round(voxels ** (1 / 3))
    out = [
        "### Paper estimate: a 45 GB HiP-CT organ on 32 GPU workers", "",
        f"Measured (`{run['tag']}`): {len(seconds)} network tiles, {seconds.mean():.1f} s of "
        f"training each ({run['steps']} steps of {run['batch_size']} points, one CPU thread per "
        f"worker), {cpu_rate / 1e9:.2f} GFLOP/s of useful training work per worker. A 45 GB "
        f"uint16 organ is {voxels / 1e9:.1f} G voxels (~{side}³); every tile is assumed to need "
        f"a network (real organs have background: fewer). Default schedule, 2000 steps of 16384 "
        f"points per tile, training FLOPs = 3 x forward:", "",
        "| ratio | auto tile | tiles | width (2 experts) | TFLOP per tile | 32 CPU workers like "
        "these | 32 GPUs, 3 ms per step | 32 GPUs, 10 TFLOP/s |",
        "|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for ratio in (256, 1024):
        tile = choose_tile((side, side, side), "uint16", ratio, policy=SIREN_TILES)
        budget = math.prod(tile) * 2 / ratio - 10
        width = widest_for_payload(
            TileNetworks(QuantConfig()).model_config(3, 1, 2), QuantConfig(), int(budget)
        )
        h = width.hidden_features
        per_tile = 3.0 * 2000 * 16384 * forward_flops(h, 2)
        tiles = voxels / math.prod(tile)
        seconds_per_tile = [per_tile / cpu_rate, 2000 * 3e-3, per_tile / 10e12]
        hours = [tiles * t / 32 / 3600 for t in seconds_per_tile]
        out.append(f"| {ratio}x | {tile[0]}³ | {tiles:,.0f} | {h} | {per_tile / 1e12:.2f} | "
                   f"{hours[0]:,.0f} h | {hours[1]:.1f} h | {hours[2]:.2f} h |")  # fmt: skip
    return [
        *out,
        "",
        "GPU times are assumptions: no GPU was lent to this work. Networks this small do not "
        "fill a GPU: a training step is some 150 small kernels, so its time is bounded by "
        "launches (~3 ms per step assumed, 6 s per tile) long before FLOPs (the last column, "
        "10 TFLOP/s of useful fp32, ~15 % of an H100/H200's fp32 peak, is the compute-bound "
        "floor). Several tiles per GPU at once (worker threads) would hide part of the launch "
        "time. Add reading the 45 GB twice (scan, then each tile's region with its margin), "
        "~2 min at 1 GB/s from a parallel file "
        "system, and one decode of each tile for its PSNR (~1/50 of its training FLOPs).",
        "",
    ]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    for mode in ("run", "figure", "seams"):
        p = sub.add_parser(mode)
        p.add_argument("--volume", default="macaque")
        p.add_argument("--shape", help="mirror to this shape, e.g. 512,512,640 (-mirror volumes)")
        p.add_argument("--crop", help="crop first, e.g. 16:112,40:168,20:148")
        p.add_argument("--ratio", type=float, default=256.0)
        p.add_argument("--tile", default="auto")
        p.add_argument("--margin", default="auto")
        p.add_argument("--allocation", default="difficulty",
                       choices=("difficulty", "equal", "uniform"))  # fmt: skip
        p.add_argument("--exponent", type=float, default=None,
                       help="difficulty allocation: bytes ∝ difficulty^EXPONENT")  # fmt: skip
        p.add_argument("--steps", type=int, default=300, help="training steps per tile")
        p.add_argument("--seed", type=int, default=0, help="every tile's training seed")
        p.add_argument("--time-limit", type=float, default=None,
                       help="training seconds per tile (the schedule follows it)")  # fmt: skip
        p.add_argument("--experts", type=int, default=None, help="per tile (default: auto)")
        p.add_argument("--batch-size", type=int, default=4096)
        p.add_argument("--workers", type=int, default=2)
        p.add_argument("--threads", type=int, default=1, help="torch threads per tile")
        p.add_argument("--memory-limit", default="2GiB", help="per worker")
        p.add_argument("--pin", action="store_true", help="pin each worker to a core")
        p.add_argument("--tag", required=True)
        p.add_argument("--work", default=str(WORK), help="volumes and stores (not committed)")
        p.add_argument("--out", default=str(DATA_OUT))
        p.add_argument("--keep", action="store_true", help="keep the store in --work")
        p.add_argument("--z", type=int, default=None, help="figure: the slice")
    r = sub.add_parser("report")
    r.add_argument("--out", default=str(DATA_OUT))
    args = parser.parse_args(argv)
    {"run": run, "figure": figure, "seams": seams, "report": report}[args.mode](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
