"""Write ``docs/benchmarks.md`` and ``docs/images/rd_*.png`` from the benchmark JSONs.

Reads every JSON under the ``--inputs`` folders (default: the committed
``docs/benchmarks/data`` then ``benchmarks/out``; a later folder's run of the same
(volume, ratio, method) replaces an earlier one) and writes: one rate–distortion table and plot
per volume (rows = ratio, columns = methods, cells "PSNR / SSIM (bytes)"), the ablation table,
the speed table with a time-to-PSNR plot, and the commands, commits, machines and wall times
they came from.

    python benchmarks/report.py
"""

from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict
from pathlib import Path

from _common import CLASSICAL, OUT, ROOT, VOLUMES

METHOD_ORDER = ["moec", *CLASSICAL]
LABELS = {
    "moec": "napari-moec",
    "hevc": "HEVC",
    "hevc_lean": "HEVC (no SEI)",
    "h264": "H.264",
    "h264_lean": "H.264 (no SEI)",
    "jpeg2000": "JPEG 2000 (JP2)",
    "jpeg2000_j2k": "JPEG 2000 (J2K)",
    "decimate": "decimate",
    "hevc_ds2": "HEVC-ds2",
    "hevc_ds2_lean": "HEVC-ds2 (no SEI)",
    "sz3": "SZ3",
    "zfp": "ZFP",
    "sperr": "SPERR",
    "tthresh": "TTHRESH",
    "zstd": "zstd-19 lossless",
}
STYLE = {
    "moec": ("C3", "o", "-", 2.5),
    "hevc": ("C0", "s", "-", 1.2),
    "hevc_lean": ("C0", "s", ":", 1.2),
    "h264": ("C1", "^", "-", 1.2),
    "h264_lean": ("C1", "^", ":", 1.2),
    "jpeg2000": ("C2", "D", "-", 1.2),
    "jpeg2000_j2k": ("C2", "D", ":", 1.2),
    "decimate": ("k", "v", "-", 1.5),
    "hevc_ds2": ("C4", "x", "-", 1.2),
    "hevc_ds2_lean": ("C4", "x", ":", 1.2),
    "sz3": ("C5", "P", "--", 1.2),
    "zfp": ("C6", "*", "--", 1.2),
    "sperr": ("C8", "h", "--", 1.5),
    "tthresh": ("C9", "p", "--", 1.2),
}


def load(inputs: list[Path]) -> dict[str, dict]:
    """kind -> key -> record; later inputs override earlier ones."""
    found: dict[str, dict] = {"rd": {}, "ablation": {}, "speed": {}}
    for folder in inputs:
        for path in sorted(Path(folder).rglob("*.json")):
            try:
                record = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            record["_path"] = str(path)
            if "points" in record:
                continue  # a time_to_quality.py curve: that script writes its own report
            if "variant" in record and "target_ratio" in record:
                # (other scripts' records name a variant too: tiled.py's research runs)
                key = (record["volume"], record["target_ratio"], record["variant"])
                found["ablation"][key] = record
            elif "train" in record and "decode" in record:
                found["speed"][path.stem] = record
            elif "method" in record and "volume" in record and "target_ratio" in record:
                # (benchmarks/tiled_baseline.py's codec runs on built volumes have no ratio
                # cell of the shared volumes' tables: docs/benchmarks/tiled.md reports them)
                key = (record["volume"], record["target_ratio"], record["method"])
                found["rd"][key] = record
    return found


def _cell(record: dict | None) -> str:
    if record is None:
        return "–"
    status = record["status"]
    if status == "ok":
        cell = f"{record['psnr']:.2f} / {record['ssim']:.3f} ({record['bytes']:,})"
        if _time_limited(record):
            cell += f" †{record['report']['steps']} steps"
        return cell
    return "no network fits" if status == "no network fits" else "cannot"


def _time_limited(record: dict) -> bool:
    """A napari-moec run that its time limit stopped before its steps were done."""
    report, options = record.get("report") or {}, record.get("options") or {}
    scheduled = options.get("steps")  # "auto": the count the run resolved is not recorded
    if not options.get("time_limit") or not isinstance(scheduled, int):
        return False
    return report.get("steps", 0) < scheduled


def _provenance(records: list[dict]) -> list[str]:
    runs = defaultdict(
        lambda: {"seconds": 0.0, "n": 0, "commits": set(), "machines": set(), "versions": set()}
    )
    for r in records:
        run = runs[r.get("command", "?")]
        if r.get("versions"):  # the scientific codecs' libraries
            run["versions"].add(", ".join(f"{k} {v}" for k, v in sorted(r["versions"].items())))
        run["seconds"] += float(r.get("seconds") or 0.0)
        run["n"] += 1
        run["commits"].add(r.get("commit", "?")[:10] + (" (dirty)" if r.get("dirty") else ""))
        m = r.get("machine", {})
        desc = (
            f"{m.get('cpu_model', m.get('processor', '?'))}, {m.get('cpu_count')} CPUs, "
            f"torch {m.get('torch')}" + (f", {m['gpu']}" if "gpu" in m else "")
        )
        run["machines"].add(desc)
    lines = []
    for command, run in runs.items():
        lines.append(
            f"- `{command}`: {run['n']} runs, {run['seconds']:.0f} s of compute; "
            f"commit {', '.join(sorted(run['commits']))}; {'; '.join(sorted(run['machines']))}"
            + (f"; {'; '.join(sorted(run['versions']))}" if run["versions"] else "")
        )
    return lines


def rd_section(rd: dict, images: Path, doc_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = []
    for volume in VOLUMES:
        records = {k: v for k, v in rd.items() if k[0] == volume}
        if not records:
            continue
        any_record = next(iter(records.values()))
        ratios = sorted({k[1] for k in records if k[1] is not None})
        methods = [m for m in METHOD_ORDER if any(k[2] == m for k in records)]
        shape = "×".join(map(str, any_record["shape"]))
        lines += [
            f"### {volume} (`{any_record['file']}`, {shape} {any_record['dtype']}, "
            f"{any_record['original_bytes']:,} B)",
            "",
        ]
        zstd = records.get((volume, None, "zstd"))
        if zstd:
            lines += [
                f"zstd-19 lossless: {zstd['bytes']:,} B = {zstd['ratio']:.2f}x "
                f"({zstd['bits_per_voxel']:.2f} bits/voxel).",
                "",
            ]
        moec = [records[k] for k in records if k[2] == "moec" and records[k]["status"] == "ok"]
        if moec:
            given = sorted({r["options"]["steps"] for r in moec if r["options"]["steps"] != "auto"})
            trained = sorted(r["report"]["steps"] for r in moec if r["options"]["steps"] == "auto")
            steps = [f"{n:,}" for n in given]
            if trained:  # the library's default: the count each run resolved to, as trained
                span = f"{trained[0]:,}" + (
                    f"-{trained[-1]:,}" if trained[-1] != trained[0] else ""
                )
                steps.append(f"auto (the library's default: {span})")
            lines += [f"napari-moec runs: {', '.join(steps)} training steps.", ""]
            limited = sorted(
                {r["options"]["time_limit"] for r in moec if r["options"].get("time_limit")}
            )
            if limited:
                lines += [
                    f"† stopped by a time limit of {', '.join(f'{t:g}' for t in limited)} s "
                    "(one CPU thread) after the steps shown: far from converged.",
                    "",
                ]
        header = "| ratio (budget B) | " + " | ".join(LABELS[m] for m in methods) + " |"
        lines += [header, "|---" * (len(methods) + 1) + "|"]
        for ratio in ratios:
            budget = next(r["budget_bytes"] for k, r in records.items() if k[1] == ratio)
            cells = [_cell(records.get((volume, ratio, m))) for m in methods]
            lines.append(f"| {ratio:g}x ({budget:,}) | " + " | ".join(cells) + " |")
        lines.append("")

        fig, ax = plt.subplots(figsize=(7, 4.5))
        for m in methods:
            ok = [r for k, r in records.items() if k[2] == m and r["status"] == "ok"]
            pts = sorted((r["bits_per_voxel"], r["psnr"]) for r in ok if not _time_limited(r))
            cut = sorted((r["bits_per_voxel"], r["psnr"]) for r in ok if _time_limited(r))
            color, marker, ls, lw = STYLE[m]
            if pts:
                ax.plot(
                    *zip(*pts, strict=True), color=color, marker=marker, ls=ls, lw=lw,
                    label=LABELS[m],
                )  # fmt: skip
            if cut:  # stopped by a time limit: not a point of the curve
                ax.plot(
                    *zip(*cut, strict=True), color=color, marker=marker, ls="none",
                    mfc="none", label=f"{LABELS[m]} † time-limited",
                )  # fmt: skip
        for ratio in ratios:
            bpv = _bits_per_sample(any_record) / ratio
            ax.axvline(bpv, color="0.85", lw=0.8, zorder=0)
            ax.text(bpv, 1.0, f"{ratio:g}x", transform=ax.get_xaxis_transform(), fontsize=7,
                    ha="center", va="bottom", color="0.4")  # fmt: skip
        ax.set_xscale("log")
        if ax.get_ylim()[0] < FLOOR_DB:  # ZFP's collapse at low rates would squash the rest
            ax.set_ylim(bottom=FLOOR_DB)
            note = f"points under {FLOOR_DB:g} dB: see the table"
            ax.text(0.01, 0.99, note, transform=ax.transAxes, ha="left", va="top",
                    fontsize=7, color="0.4")  # fmt: skip
        ax.set_xlabel("bits per voxel (file bytes × 8 / voxels)")
        ax.set_ylabel("PSNR over the data range (dB)")
        ax.set_title(f"{volume}: rate–distortion", pad=14)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        images.mkdir(parents=True, exist_ok=True)
        png = images / f"rd_{volume}.png"
        fig.savefig(png, dpi=110)
        plt.close(fig)
        lines += [f"![{volume} rate–distortion]({_rel(png, doc_dir)})", ""]
    return lines


SCIENTIFIC = ["sz3", "zfp", "sperr", "tthresh"]
#: The rate–distortion plots start here (ZFP reaches −9 dB at 0.016 bit/voxel on hipct).
FLOOR_DB = 10.0


def _psnr(record: dict | None) -> str:
    if record is None:
        return "–"
    return f"{record['psnr']:.2f}" if record["status"] == "ok" else record["status"]


def best_section(rd: dict) -> list[str]:
    """Per (volume, ratio): the best codec of every kind at the budget, and napari-moec.

    "Best codec" is the highest PSNR among every classical and scientific method run there
    (every variant of ``CLASSICAL``); the scientific codecs' own PSNRs follow, then
    napari-moec's file and its difference to that best.
    """
    cells: dict[tuple, dict] = defaultdict(dict)
    for (volume, ratio, method), record in rd.items():
        if ratio is not None:
            cells[(volume, ratio)][method] = record
    order = list(VOLUMES)
    lines = [
        "| volume | ratio | budget B | best codec (PSNR dB) | "
        + " | ".join(LABELS[m] for m in SCIENTIFIC)
        + " | napari-moec | napari-moec − best |",
        "|---|---|---|---|" + "---|" * len(SCIENTIFIC) + "---|---|",
    ]
    wins: dict[str, int] = defaultdict(int)
    for volume, ratio in sorted(cells, key=lambda k: (order.index(k[0]), k[1])):
        by_method = cells[(volume, ratio)]
        fitted = [r for m, r in by_method.items() if m in CLASSICAL and r.get("status") == "ok"]
        best = max(fitted, key=lambda r: r["psnr"], default=None)
        budget = next(iter(by_method.values()))["budget_bytes"]
        moec = by_method.get("moec")
        if best is None:
            best_text, diff = "none fits", "–"
        else:
            wins[best["method"]] += 1
            best_text = f"{LABELS[best['method']]} {best['psnr']:.2f}"
            ok = moec is not None and moec["status"] == "ok"
            diff = f"{moec['psnr'] - best['psnr']:+.2f}" if ok else "–"
        lines.append(
            f"| {volume} | {ratio:g}x | {budget:,} | {best_text} | "
            + " | ".join(_psnr(by_method.get(m)) for m in SCIENTIFIC)
            + f" | {_psnr(moec)} | {diff} |"
        )
    tally = ", ".join(
        f"{LABELS[m]} {n}" for m, n in sorted(wins.items(), key=lambda kv: (-kv[1], kv[0]))
    )
    return [*lines, "", f"Best codec, cells won: {tally}.", ""]


def _bits_per_sample(record: dict) -> int:
    return {"uint8": 8, "uint16": 16, "int16": 16, "float32": 32}[record["dtype"]]


def _rel(path: Path, start: Path) -> str:
    import os

    return os.path.relpath(path, start)


def ablation_section(ablations: dict) -> list[str]:
    """One table per (volume, ratio): every variant there is at the same byte budget."""
    groups: dict[tuple, dict] = {}
    for (volume, ratio, name), record in ablations.items():
        groups.setdefault((volume, ratio), {})[name] = record
    lines: list[str] = []
    for (volume, ratio), group in sorted(groups.items()):
        budget = next(iter(group.values()))["budget_bytes"]
        lines += _ablation_table(group)
        note = f"Volume {volume}, ratio {ratio:g}x (budget {budget:,} B for every variant)."
        lines += ["", note, ""]
        lines += [*_provenance(list(group.values())), ""]
    return lines


def _ablation_table(group: dict) -> list[str]:
    lines = [
        "| variant | experts | top-k | balance weight | router freeze at | ω0 first | width "
        "| bytes | PSNR (dB) | SSIM | steps | seconds |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    ordered = sorted(
        group.items(),
        key=lambda kv: (kv[1].get("order", 0), kv[1]["options"].get("w0_first") or 0),
    )
    for name, r in ordered:
        o = r["options"]
        if r["status"] != "ok":
            lines.append(f"| {name} | {o['num_experts']} | {o['top_k']} | | | | | {r['status']} |")
            continue
        w0_first = o.get("w0_first") or r["report"].get("w0_first", 30)
        lines.append(
            f"| {name} | {o['num_experts']} | {o['top_k']} | {o['balance_weight']} | "
            f"{o['freeze_router_at']} | {w0_first} | {r['report']['hidden_features']} | "
            f"{r['bytes']:,} | {r['psnr']:.2f} | {r['ssim']:.3f} | {r['report']['steps']} | "
            f"{r['seconds']:.0f} |"
        )
    return lines


def _ceiling(record: dict) -> str:
    """The sine-layer bound of speed.py (runs made before it have none)."""
    bound = record.get("sine_layer_bound")
    if bound is None:
        return "not measured"
    return f"{bound['fraction_of_peak']:.1%} ({bound['sin_share']:.0%})"


def speed_section(speed: dict, images: Path, doc_dir: Path) -> list[str]:
    if not speed:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = [
        "| run | device (threads, load) | width / experts / k | matmul peak GFLOP/s "
        "(layer-shape) | train points/s | train GFLOP/s useful (executed) | % of peak | "
        "ms/step | decode voxels/s | "
        "decode GFLOP/s | % of peak | sine-layer ceiling (sin share) | peak memory |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    fig, ax = plt.subplots(figsize=(7, 4))
    for _, r in sorted(speed.items()):
        m, t, d, mem = r["matmul"], r["train"], r["decode"], r["memory"]
        model = r["model"]
        machine = r.get("machine", {})
        device = r["device"] + (f" ({machine['gpu']})" if "gpu" in machine else "")
        threads = f"{r.get('torch_threads', '?')} threads"
        if "load_average_1min" in machine:
            threads += f", load {machine['load_average_1min']}"
        memory = f"{mem['max_rss_mib']:.0f} MiB RSS" + (
            f", {mem['cuda_max_allocated_mib']:.0f} MiB CUDA"
            if "cuda_max_allocated_mib" in mem
            else ""
        )
        lines.append(
            f"| {r['volume']} {r['ratio']:g}x | {device} ({threads}) | "
            f"{model['hidden_features']} / {model['num_experts']} / {model['top_k']} | "
            f"{m['peak_flops_per_s'] / 1e9:.1f} "
            f"({m['layer_flops_per_s'] / 1e9:.1f}) | {t['points_per_s']:,.0f} | "
            f"{t['flops_per_s_useful'] / 1e9:.2f} ({t['flops_per_s_executed'] / 1e9:.2f}) | "
            f"{t['fraction_of_peak_useful']:.1%} | {t['seconds_per_step'] * 1e3:.0f} | "
            f"{d['voxels_per_s']:,.0f} | {d['flops_per_s'] / 1e9:.2f} | "
            f"{d['fraction_of_peak']:.1%} | {_ceiling(r)} | {memory} |"
        )
        curve = [(p["seconds"], p["psnr"]) for p in r["time_to_psnr"] if _finite(p["psnr"])]
        if curve:
            label = f"{r['volume']} {r['ratio']:g}x, {device}, {threads}"
            ax.plot(*zip(*curve, strict=True), label=label)
    ax.set_xlabel("training seconds")
    ax.set_ylabel("training-batch PSNR (dB, data range)")
    ax.set_title("time to PSNR")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    png = images / "rd_time_to_psnr.png"
    images.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)
    lines += ["", f"![time to PSNR]({_rel(png, doc_dir)})", ""]
    return lines + _provenance(list(speed.values())) + [""]


def _finite(x) -> bool:
    return isinstance(x, int | float) and math.isfinite(x)


INTRO = """# Benchmarks

Generated by `python benchmarks/report.py` from the JSON files in `docs/benchmarks/data/`
(committed) and `benchmarks/out/` (local runs); see `benchmarks/README.md` to rerun anything.

**Method.** Every method gets the same byte budget, `floor(original bytes / ratio)`, and is
tuned to its best quality whose encoded bytes fit it (napari-moec: the `.moec` file on disk,
header and checksum included, decoded from the file; HEVC/H.264: the raw elementary stream;
JPEG 2000: the sum of the per-slice files; decimate: the zstd-19 frame). Quality: PSNR over the
original's data range (max − min) and 3D SSIM (skimage defaults), `napari_moec.metrics`.
Classical methods (`benchmarks/codecs.py`): HEVC = ffmpeg libx265 veryslow, 12-bit gray (data
rescaled to 12 bits), CRF bisected (integer, then fractional); H.264 = libx264 veryslow, 10-bit
gray; JPEG 2000 = OpenJPEG (imagecodecs) per Z slice, one quality level bisected; decimate =
anti-aliased downsampling of Z, Y, X to the largest grid whose zstd-19 bytes fit, cubic
upsampling back; HEVC-ds2 = HEVC of the 2x-downsampled volume, cubic upsampling back. "no SEI"
/ "J2K": the same codecs without the bytes that carry no image (the encoders' informational SEI
text, the JP2 boxes). 4D volumes: T×Z slices are the video frames / JPEG 2000 slices; decimate
and ds2 resample Z, Y, X only. Not counted for the classical codecs: the ~24 bytes of shape,
dtype and value range a container would need. ffmpeg comes from Debian packages, for the
benchmark only.
Scientific codecs (`benchmarks/scientific.py`), every byte the library emits counted (its
headers included), the volume coded as float32 (exact for uint16) and decoded values rounded
and clipped to the original dtype: SZ3 (`pysz`) = absolute error bound tuned; ZFP (`zfpy`) =
fixed accuracy and fixed rate each tuned, the better kept; SPERR (imagecodecs, libsperr) = bits
per voxel and target PSNR each tuned, the better kept; TTHRESH (`numcodecs-wasm-tthresh`) =
target PSNR tuned. Each knob is scanned on a grid and bisected; the lowest-error candidate that
fits is kept. 4D: SZ3, ZFP and TTHRESH code the 4D array natively; SPERR codes each of the T
3D volumes with an equal share of the budget (it has no 4D mode).
Cells: PSNR (dB) / SSIM (bytes); "cannot" = even the lowest quality does not fit; "no network
fits" = napari-moec refuses the budget (its smallest network is larger).

**Differences from `../shared/BASELINES.md`**: see
[benchmarks/baselines-check.md](benchmarks/baselines-check.md). Its H.264 column is
wrong by up to ~8 dB (ffmpeg decoded the 4:0:0 stream through a TV-range conversion); the other
columns reproduce exactly with its settings.
"""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--inputs", nargs="+", type=Path, default=[ROOT / "docs" / "benchmarks" / "data", OUT]
    )
    parser.add_argument("--doc", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--images", type=Path, default=ROOT / "docs" / "images")
    args = parser.parse_args(argv)
    found = load(args.inputs)
    doc_dir = args.doc.parent
    lines = [INTRO]
    notes = doc_dir / "benchmarks" / "notes.md"
    if notes.exists():  # hand-written findings, kept across regenerations
        lines += [notes.read_text().strip(), ""]
    lines += ["## Rate–distortion", ""]
    lines += ["### Best at equal bytes: every codec against napari-moec", ""]
    lines += best_section(found["rd"])
    lines += rd_section(found["rd"], args.images, doc_dir)
    lines += ["Runs:", "", *_provenance(list(found["rd"].values())), ""]
    lines += ["## Ablations", ""]
    lines += ablation_section(found["ablation"]) or ["Not run yet (`benchmarks/ablations.py`).", ""]
    lines += ["## Speed", ""]
    lines += speed_section(found["speed"], args.images, doc_dir) or ["Not run yet.", ""]
    profiles = sorted((doc_dir / "benchmarks").glob("profile-*.txt"))
    if profiles:
        links = ", ".join(f"[{p.name}]({_rel(p, doc_dir)})" for p in profiles)
        lines += [f"Profiles of the training loop (`speed.py --profile`): {links}.", ""]
    args.doc.parent.mkdir(parents=True, exist_ok=True)
    args.doc.write_text("\n".join(lines).rstrip() + "\n")
    print(f"wrote {args.doc} ({sum(len(v) for v in found.values())} runs)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
