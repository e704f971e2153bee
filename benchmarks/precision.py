"""Stored precision at equal bytes: fp32 vs fp16 vs int8 vs int8 + entropy coding (and more).

Every variant gets the same file budget (``original bytes / ratio``); the network is sized for
the precision it is stored in, trained with the same schedule and seed, and its quality is
measured on the volume decoded *from the saved file* (``_common.compress_and_measure``). One
JSON per (volume, ratio, variant) under ``--out``; existing ones are skipped. Then the table
between the two ``<!-- precision-table -->`` markers of ``--doc`` (``docs/format.md``) is
rewritten from all the JSONs in ``--out`` (``--report`` does only that).

    python benchmarks/precision.py --steps 1500 --out benchmarks/out/precision
    python benchmarks/precision.py --report   # rewrites docs/format.md's table from the JSON
    python benchmarks/precision.py --steps 30 --volumes hipct --out /tmp/p --doc /tmp/p.md  # trial

Takes ~25 minutes on 2 CPU cores with the defaults.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import time
from pathlib import Path

import numpy as np
import torch

from _common import compress_and_measure, load_volume
from napari_moec import QuantConfig, TrainConfig

#: The volumes measured (those of ``_common.VOLUMES`` small enough for CPU runs).
VOLUMES = ("hipct", "ct_head", "mri4d")
VARIANTS = {
    "fp32": (QuantConfig("fp32"), {}),
    "fp16": (QuantConfig("fp16"), {}),
    "int8 fixed-length": (QuantConfig("int8", entropy=False), {}),
    "int8 + entropy": (QuantConfig("int8"), {}),
    "int8 per-channel + entropy": (QuantConfig("int8", per_channel=True), {}),
    "int8 + entropy + QAT (last 10%)": (QuantConfig("int8"), {"qat_fraction": 0.1}),
    "int6 + entropy": (QuantConfig("int6"), {}),
}
ROOT = Path(__file__).resolve().parents[1]


def run(out: Path, volumes, ratios, variants, steps: int, seed: int, threads: int | None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    for vol_name in volumes:
        volume = load_volume(vol_name)
        for ratio in ratios:
            for variant in variants:
                quant, extra = VARIANTS[variant]
                path = out / f"{vol_name}_{ratio}x_{variant.replace(' ', '_')}.json"
                if path.exists():
                    continue
                record = {
                    "volume": vol_name,
                    "ratio": ratio,
                    "variant": variant,
                    "steps": steps,
                    "seed": seed,
                    "commit": commit,
                    "machine": f"{platform.machine()} {threads or 'all'} threads, "
                    f"torch {torch.__version__}",
                }
                t0 = time.perf_counter()
                run = compress_and_measure(
                    volume,
                    ratio,
                    quant=quant,
                    train=TrainConfig(steps=steps, seed=seed, **extra),
                    device="cpu",
                    threads=threads,
                )
                if run.status != "ok":
                    record["skipped"] = run.reason
                else:
                    c = run.compressed
                    record |= {
                        "file_bytes": run.file_bytes,
                        "budget_bytes": volume.nbytes // ratio,
                        "hidden_features": c.header.model.hidden_features,
                        "parameters": c.report.parameters,
                        "quant_multiplier": c.report.quant_multiplier,
                        "psnr": run.quality["psnr"],
                        "ssim": run.quality["ssim"],
                    }
                record["seconds"] = round(time.perf_counter() - t0, 1)
                path.write_text(json.dumps(record, indent=1))
                print(json.dumps(record), flush=True)


def report(out: Path, doc: Path) -> None:
    rows = [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]
    lines = []
    for vol_name in VOLUMES:
        for ratio in sorted({r["ratio"] for r in rows if r["volume"] == vol_name}):
            sel = [r for r in rows if r["volume"] == vol_name and r["ratio"] == ratio]
            if not sel:
                continue
            lines += [
                f"### {vol_name} at {ratio}x (budget {sel[0].get('budget_bytes')} bytes)",
                "",
                "| stored as | file bytes | width | parameters | PSNR dB | SSIM | commit |",
                "|---|---|---|---|---|---|---|",
            ]
            for variant in VARIANTS:
                r = next((r for r in sel if r["variant"] == variant), None)
                if r is None or "skipped" in r:
                    continue
                lines.append(
                    f"| {variant} | {r['file_bytes']} | {r['hidden_features']} | "
                    f"{r['parameters']} | {r['psnr']:.2f} | {r['ssim']:.4f} | {r['commit']} |"
                )
            lines.append("")
    meta = rows[0] if rows else {}
    text = doc.read_text() if doc.exists() else ""
    marker = "<!-- precision-table -->"
    table = (
        f"{marker}\nMeasured by `python benchmarks/precision.py --steps {meta.get('steps')}` "
        f"(commit per row) on {meta.get('machine')} (CPU); PSNR over the "
        f"data range, 3D SSIM, decoded from the saved file.\n\n" + "\n".join(lines) + marker
    )
    if marker in text:
        head, _, rest = text.partition(marker)
        _, _, tail = rest.partition(marker)
        text = head + table + tail
    else:
        text += "\n" + table + "\n"
    doc.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--volumes", nargs="+", default=list(VOLUMES), choices=VOLUMES)
    parser.add_argument("--ratios", nargs="+", type=int, default=[64, 256])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads per run")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "precision")
    parser.add_argument(
        "--report", action="store_true", help="only rewrite docs/format.md's table from the JSON"
    )
    parser.add_argument(
        "--doc",
        type=Path,
        default=ROOT / "docs" / "format.md",
        help="the Markdown file whose precision table is rewritten (for trial runs: elsewhere)",
    )
    args = parser.parse_args()
    if not args.report:
        run(args.out, args.volumes, args.ratios, args.variants, args.steps, args.seed, args.threads)
    report(args.out, args.doc)


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
