"""Time to quality: PSNR of the saved file vs seconds of training, per volume, ratio and lever.

Each run trains with a time budget (``--seconds``; the schedule follows it) and, every
``--every`` seconds of training, stores a snapshot of the current weights exactly as a finished
run would (rate control, file bytes, training summary), saves the file, loads it, decodes it
from disk and measures it. The snapshot work is not counted as training time. The last point
is the run's real result (best weights, as ``Compressor.run`` returns them).

Variants (levers on/off; everything else is the library's default). Every variant but the
``grid*`` ones trains the SIREN family (the library's default model is the grid family since
session 8; the SIREN variants were measured when SIREN was the default):

* ``default``: the current defaults (warm-up + cosine from 5e-3 on networks of width >= 21,
  exponential from 2e-3 below; loss guard; fused sine layers).
* ``exponential``: the previous schedule everywhere (exponential decay from 2e-3, no
  warm-up), with the guard.
* ``previous``: the previous training defaults (exponential, no guard). The fused sine layers
  compute the same function, so they cannot be switched off; compare ``speed.py`` for them.
* ``cosine``: warm-up + cosine at every width, with the guard.
* architecture at equal bytes (the width follows from the budget): ``experts1`` (a plain
  SIREN), ``experts2`` (the default before "auto" chose one network where it is wide),
  ``experts4``, ``top2``, ``layers2`` (wider), ``layers5`` (deeper and narrower).

Output: one JSON per run (``--out``), and with ``report`` a Markdown table and a plot in
docs/ next to the best classical codec at the same bytes (``docs/benchmarks/data/rd``)::

    python benchmarks/time_to_quality.py run --volumes hipct ct_head mri4d --ratios 64 256 \\
        --variants default previous --seconds 300 --threads 2
    python benchmarks/time_to_quality.py report
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from _common import ROOT, SPACING, load_volume, provenance, quality, write_json

DATA_OUT = ROOT / "docs" / "benchmarks" / "data" / "time_to_quality"
RD = ROOT / "docs" / "benchmarks" / "data" / "rd"
DOC = ROOT / "docs" / "benchmarks" / "time_to_quality.md"
PLOT = ROOT / "docs" / "images" / "time_to_quality.png"
VARIANTS = {
    "default": {},
    "exponential": {"schedule": "exponential"},
    "previous": {"schedule": "exponential", "guard": False},
    "cosine": {"schedule": "cosine"},
}
#: The variants the report's first table shows first, each family's default, and what they are.
HEADLINE = {
    "grid": "the grid family, one network (the library's and the CLI's default)",
    "grid4_top2": "the grid family with the router on, 4 experts top-2 (the widget's default)",
    "default": "the SIREN family's default",
}
#: The curves of each cell's plot (both families' defaults and the SIREN expert counts), each
#: with one colour and label in every panel.
PLOTTED = {
    "grid": ("C0", "grid, one network"),
    "grid4_top2": ("C1", "grid, 4 experts top-2"),
    "default": ("C2", "SIREN default"),
    "experts1": ("C3", "SIREN, 1 expert"),
    "experts2": ("C4", "SIREN, 2 experts"),
}
#: Architecture levers at equal bytes (ArchConfig fields; training as ``default``).
ARCH_VARIANTS = {
    "experts1": {"num_experts": 1},
    "experts2": {"num_experts": 2},
    "experts4": {"num_experts": 4},
    "top2": {"top_k": 2},
    "layers2": {"expert_layers": 2},
    "layers5": {"expert_layers": 5},
    # the grid family (entropy-coded latent grids under ReLU-MLP experts): one network, and
    # the router on with 2 and 4 experts (top-1), and 4 experts top-2
    "grid": {"model": "grid"},
    "grid2": {"model": "grid", "num_experts": 2, "top_k": 1},
    "grid4": {"model": "grid", "num_experts": 4, "top_k": 1},
    "grid4_top2": {"model": "grid", "num_experts": 4, "top_k": 2},
    # routed experts half as wide as the sizing's one network: a top-2 voxel then runs
    # about one 16-wide network's products
    "grid4_top2_h8": {"model": "grid", "num_experts": 4, "top_k": 2, "hidden_features": 8},
    # routed experts wider than the sizing's 16 (session 28: the macaque's 69 kB payload)
    "grid4_top2_h24": {"model": "grid", "num_experts": 4, "top_k": 2, "hidden_features": 24},
    # wider experts than the sizing's 16 (the network is ~1 % of a 69 kB macaque payload)
    "grid_h24": {"model": "grid", "hidden_features": 24},
    "grid_h32": {"model": "grid", "hidden_features": 32},
}
#: Methods that count as "the best classical codec at equal bytes": the lean video and JPEG 2000
#: settings, downsampling and the scientific compressors (``benchmarks/scientific.py``).
CLASSICAL = [
    "hevc_lean",
    "h264_lean",
    "jpeg2000_j2k",
    "hevc_ds2_lean",
    "decimate",
    "sz3",
    "zfp",
    "sperr",
    "tthresh",
]


def run_one(volume_name: str, ratio: float, variant: str, args) -> dict:
    from napari_moec import ArchConfig, Compressor, Progress, RunConfig, TrainConfig

    vol = load_volume(volume_name)
    levers = {**VARIANTS.get(variant, {}), **ARCH_VARIANTS.get(variant, {})}
    train = TrainConfig(steps=10**9, time_limit=args.seconds, seed=args.seed,
                        **VARIANTS.get(variant, {}))  # fmt: skip
    compressor = Compressor(
        vol,
        ratio,
        # every variant but grid* is the SIREN family's (the library's default model is grid)
        arch=ArchConfig(**{"model": "siren", **ARCH_VARIANTS.get(variant, {})}),
        train=train,
        spacing=SPACING[volume_name],
        run=RunConfig(device="cpu", threads=args.threads),
    )
    torch.set_num_threads(compressor.threads)
    points = []
    next_point = args.every
    wall0 = time.perf_counter()

    def measure(model, steps, seconds, final):
        compressed = compressor.store(model, steps, seconds)
        with tempfile.TemporaryDirectory() as tmp:
            path = compressed.save(Path(tmp) / "v.moec")
            from napari_moec import load

            decoded = load(path).decode()
            nbytes = path.stat().st_size
        points.append(
            {
                "train_seconds": round(seconds, 2),
                "steps": steps,
                "bytes": nbytes,
                "final": final,
                "quant_extra_bits": compressed.report.quant_extra_bits,
                **quality(vol, decoded),
            }
        )
        if final and compressor.plan.family == "siren":
            points[-1].update(same_weights_other_grids(compressor, model))
        print(
            f"{volume_name} {ratio:g}x {variant}: {seconds:6.1f} s {steps:6d} steps "
            f"{points[-1]['psnr']:.2f} dB {nbytes} B",
            flush=True,
        )

    run = compressor.train()
    try:
        while True:
            event = next(run)
            if isinstance(event, Progress) and event.elapsed >= next_point:
                next_point += args.every
                measure(copy.deepcopy(compressor.model), event.step, event.elapsed, False)
    except StopIteration as done:
        model, steps, seconds = done.value
    measure(model, steps, seconds, True)
    m = compressor.model_config
    return {
        "volume": volume_name,
        "target_ratio": ratio,
        "variant": variant,
        "options": {
            "seconds": args.seconds,
            "seed": args.seed,
            "threads": args.threads,
            **levers,
        },
        "model": {"family": compressor.plan.family, **compressor.family.codec.describe(m)[0]},
        "budget_bytes": compressor.budget,
        "points": points,
        "wall_seconds": round(time.perf_counter() - wall0, 1),
        **provenance("cpu"),
    }


def same_weights_other_grids(compressor, model) -> dict:
    """PSNR of the float network and of one uniform quantization grid for every tensor (the
    rate control before per-group precision), for the weights that made the final file: the
    quantization lever measured on identical training (the file's own is ``psnr``)."""
    from napari_moec.compressed import model_from_weights
    from napari_moec.decode import evaluate
    from napari_moec.format import unpack_payload
    from napari_moec.metrics import psnr
    from napari_moec.rate import fit_payload

    header, vol = compressor.header, compressor.volume

    def file_psnr(network) -> float:
        values = evaluate(network, header.shape, device="cpu")
        return round(psnr(vol, compressor.normalization.invert(values, vol.dtype)), 2)

    state = {k: v.detach().cpu() for k, v in model.layout_state().items()}
    uniform = fit_payload(header.model, header.quant, state, compressor.payload_budget)
    weights = unpack_payload(header.model, header.quant, uniform.payload)
    return {
        "psnr_float": file_psnr(model),
        "psnr_uniform_grid": file_psnr(model_from_weights(header, weights)),
    }


def best_classical(volume: str, ratio: float) -> dict | None:
    """The best lean classical result that fits the same budget (from rd.py's JSON)."""
    best = None
    for method in CLASSICAL:
        path = RD / volume / f"{volume}_{ratio:g}x_{method}.json"
        if not path.exists():
            continue
        record = json.loads(path.read_text())
        if record.get("status") == "ok" and (best is None or record["psnr"] > best["psnr"]):
            best = record
    return best


def report(args) -> int:
    records = [json.loads(p.read_text()) for p in sorted(Path(args.out).glob("*.json"))]
    if not records:
        print(f"no runs in {args.out}", file=sys.stderr)
        return 1
    cells: dict = {}
    for r in records:
        if r.get("options", {}).get("seconds", 300.0) != 300.0:
            continue  # the tables and plots compare five-minute runs (others: README, notes)
        cells.setdefault((r["volume"], r["target_ratio"]), {})[r["variant"]] = r
    # the headline: each family's default (the grid family one network and with the router
    # on, the SIREN family's "default"), then any SIREN schedule variants that were run
    heads = [v for v in HEADLINE if any(v in c for c in cells.values())]
    variants = [v for v in VARIANTS if v != "default" and any(v in c for c in cells.values())]
    shown = heads + variants
    lines = [
        "# Time to quality",
        "",
        "Made by `python benchmarks/time_to_quality.py report` from "
        "`docs/benchmarks/data/time_to_quality/*.json`. PSNR (dB, over the original's data "
        "range) of the `.moec` file saved, reloaded and decoded from disk, against seconds of "
        "training (the compressor's own clock: optimiser steps only; storing a snapshot is not "
        "counted). Each run has a time budget that its schedule follows; intermediate points "
        'are snapshots of that run ("anytime" quality: a run given a shorter budget decays its '
        "learning rate sooner and usually ends higher than the same point of a longer run). "
        "Best codec: the best that fits the same budget (`docs/benchmarks.md`): lean "
        "HEVC, H.264, JPEG 2000 (J2K), HEVC-ds2, downsampling, SZ3, ZFP, SPERR, TTHRESH. "
        + " ".join(f"{v}: {HEADLINE[v]}." for v in heads),
        "",
        "![time to quality](../images/time_to_quality.png)",
        "",
        "| volume | ratio | budget B | best codec | "
        + " | ".join(f"{v}: 60 s / 150 s / end" for v in shown)
        + " | grid steps, machine | grid − best | grid4_top2 − best |",
        "|---|---|---|---|" + "---|" * len(shown) + "---|---|---|",
    ]
    for (volume, ratio), by_variant in sorted(cells.items()):
        classical = best_classical(volume, ratio)
        any_run = next(iter(by_variant.values()))
        row = [volume, f"{ratio:g}x", f"{any_run['budget_bytes']:,}"]
        row.append("–" if classical is None else f"{classical['psnr']:.2f} ({classical['method']})")
        for v in shown:
            r = by_variant.get(v)
            row.append("–" if r is None else " / ".join(_at(r, t) for t in (60, 150, None)))
        g = by_variant.get("grid")
        row.append("–" if g is None else f"{_final(g)['steps']:,}, {_machine(g)}")
        for v in ("grid", "grid4_top2"):
            r = by_variant.get(v)
            ok = r is not None and classical is not None
            row.append(f"{_final(r)['psnr'] - classical['psnr']:+.2f}" if ok else "–")
        lines.append("| " + " | ".join(row) + " |")
    levers = [(key, v, r) for key, by in sorted(cells.items()) for v, r in by.items()
              if v in ARCH_VARIANTS]  # fmt: skip
    if levers:
        lines += [
            "",
            "Architecture at equal bytes (the same time budget; the width follows from the "
            "budget):",
            "",
            "| volume | ratio | variant | width / experts / top-k / layers | 60 s / 150 s / end "
            "| steps | machine | − SIREN default | − best codec |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for (volume, ratio), v, r in levers:
            m, end = r["model"], _final(r)["psnr"]
            d = cells[(volume, ratio)].get("default")
            classical = best_classical(volume, ratio)
            shape = (f"{m['hidden_features']} / {m['num_experts']} / {m.get('top_k', 1)} / "
                     f"{m.get('expert_layers', 3)}")  # fmt: skip
            vs_default = "–" if d is None else f"{end - _final(d)['psnr']:+.2f}"
            vs_classical = "–" if classical is None else f"{end - classical['psnr']:+.2f}"
            curve = " / ".join(_at(r, t) for t in (60, 150, None))
            lines.append(f"| {volume} | {ratio:g}x | {v} | {shape} | {curve} | "
                         f"{_final(r)['steps']:,} | {_machine(r)} | {vs_default} "
                         f"| {vs_classical} |")  # fmt: skip
    grids = [(r, _final(r)) for r in records if "psnr_uniform_grid" in _final(r)]
    if grids:
        lines += [
            "",
            "Quantization of the same final weights (rate control at equal bytes): the float "
            "network, one uniform grid for every tensor, and the file as stored, whose encoder "
            "and router precision the rate controller chose by the error on a fixed set of "
            "voxels:",
            "",
            "| volume | ratio | variant | float | one grid | file | file − one grid | extra bits |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r, end in sorted(grids, key=lambda g: (g[0]["volume"], g[0]["target_ratio"])):
            extra = ", ".join(f"{k} +{v}" for k, v in end["quant_extra_bits"].items()) or "none"
            lines.append(
                f"| {r['volume']} | {r['target_ratio']:g}x | {r['variant']} | "
                f"{end['psnr_float']:.2f} | {end['psnr_uniform_grid']:.2f} | {end['psnr']:.2f} | "
                f"{end['psnr'] - end['psnr_uniform_grid']:+.2f} | {extra} |"
            )
    lines += ["", "Runs:", ""]
    for r in sorted(records, key=lambda r: (r["volume"], r["target_ratio"], r["variant"])):
        m = r["machine"]
        dirty = " (dirty)" if r["dirty"] else ""
        lines.append(
            f"- `{r['command']}` ({r['volume']} {r['target_ratio']:g}x "
            f"{r['variant']}): commit {r['commit'][:10]}{dirty}, "
            f"{m.get('cpu_model', m['processor'])}, {m['cpu_count']} CPUs, torch "
            f"{m['torch']}, {r['options']['threads']} threads, load "
            f"{m['load_average_1min']} at the end, {r['date']}"
            + (f". {r['note']}" if "note" in r else "")
        )
    DOC.write_text("\n".join(lines) + "\n")
    _plot(cells, [v for v in PLOTTED if any(v in c for c in cells.values())])
    print(DOC)
    return 0


def _machine(record: dict) -> str:
    """The CPU, shortened: runs on different hosts differ in steps per second, so a
    comparison between variants holds only on one machine."""
    name = record["machine"].get("cpu_model", record["machine"]["processor"])
    return "Intel Xeon" if "Intel" in name else name


def _final(record: dict) -> dict:
    return next(p for p in record["points"] if p["final"])


def _at(record: dict, seconds: float | None) -> str:
    if seconds is None:
        p = _final(record)
        return f"**{p['psnr']:.2f}**"
    before = [p for p in record["points"] if not p["final"] and p["train_seconds"] <= seconds + 1]
    return f"{before[-1]['psnr']:.2f}" if before else "–"


def _plot(cells: dict, variants: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted(cells)
    cols = min(3, len(keys))
    rows = (len(keys) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys, strict=False):
        for v in variants:
            r = cells[key].get(v)
            if r is None:
                continue
            pts = [p for p in r["points"] if not p["final"]]
            final = _final(r)
            xs = [p["train_seconds"] for p in pts] + [final["train_seconds"]]
            ys = [p["psnr"] for p in pts] + [final["psnr"]]
            color, label = PLOTTED.get(v, (None, v))
            ax.plot(xs, ys, marker=".", color=color, label=label)
        classical = best_classical(*key)
        if classical is not None:
            ax.axhline(classical["psnr"], color="k", ls=":", lw=1, label=f"{classical['method']}")
        ax.set_title(f"{key[0]} {key[1]:g}x")
        ax.set_xlabel("training seconds")
        ax.set_ylabel("PSNR of the file (dB)")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(keys) :]:
        ax.axis("off")
    fig.tight_layout()
    PLOT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(PLOT, dpi=110)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="train and measure")
    r.add_argument("--volumes", nargs="+", default=["hipct", "ct_head", "mri4d"])
    r.add_argument("--ratios", nargs="+", type=float, default=[64, 256])
    r.add_argument("--variants", nargs="+", choices=[*VARIANTS, *ARCH_VARIANTS],
                   default=["default"])  # fmt: skip
    r.add_argument("--seconds", type=float, default=300.0, help="training budget per run")
    r.add_argument("--every", type=float, default=30.0, help="seconds between snapshots")
    r.add_argument("--threads", type=int, default=2)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--force", action="store_true", help="redo runs whose JSON exists")
    r.add_argument("--out", type=Path, default=DATA_OUT)
    p = sub.add_parser("report", help="docs/benchmarks/time_to_quality.md and the plot")
    p.add_argument("--out", type=Path, default=DATA_OUT)
    args = parser.parse_args(argv)
    from napari_moec import ConfigError

    if args.command == "report":
        return report(args)
    for volume in args.volumes:
        for ratio in args.ratios:
            for variant in args.variants:
                path = args.out / f"{volume}_{ratio:g}x_{variant}_{args.seconds:g}s.json"
                if path.exists() and not args.force:
                    continue
                try:
                    record = run_one(volume, ratio, variant, args)
                except ConfigError as exc:  # e.g. 4 experts' weights alone over the budget
                    print(f"{volume} {ratio:g}x {variant}: no model fits: {exc}", flush=True)
                    continue
                write_json(path, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
