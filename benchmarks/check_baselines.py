"""Reproduce ``../shared/BASELINES.md`` (hipct and ct_head) with ``benchmarks/codecs.py``.

BASELINES.md's method, as far as the numbers let us infer it: integer CRFs for HEVC/H.264, the
H.264 stream decoded through ``gray10le`` (a range conversion, see ``codecs.h264``), JP2 files
per slice with a fractional quality level, decimate and hevc-ds2 as in ``codecs``. This script
runs exactly that and prints our numbers next to theirs, plus the corrected / refined settings
the rate–distortion tables use. Writes ``--out`` (JSON) and ``--markdown``.

    python benchmarks/check_baselines.py --out docs/benchmarks/data/baselines-check.json \\
        --markdown docs/benchmarks/baselines-check.md
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from _common import load_codecs, load_volume, provenance, quality, write_json

#: BASELINES.md (measured 2026-11-22): PSNR / SSIM, None = "cannot".
PUBLISHED = {
    "hipct": {
        "hevc": [(36.19, 0.948), (32.77, 0.891), None, None, None],
        "h264": [(28.69, 0.936), (27.92, 0.885), (26.25, 0.781), None, None],
        "jpeg2000": [(32.76, 0.889), None, None, None, None],
        "decimate": [
            (31.62, 0.867), (29.50, 0.804), (27.28, 0.718), (24.40, 0.576), (22.28, 0.498)
        ],
        "hevc_ds2": [(32.41, 0.887), (32.24, 0.881), None, None, None],
    },
    "ct_head": {
        "hevc": [(49.50, 0.998), (34.66, 0.954), None, None, None],
        "h264": [(31.18, 0.683), (29.84, 0.661), (24.00, 0.481), None, None],
        "jpeg2000": [(32.30, 0.909), None, None, None, None],
        "decimate": [
            (29.92, 0.916), (26.74, 0.810), (24.18, 0.657), (22.04, 0.510), (19.30, 0.339)
        ],
        "hevc_ds2": [(30.35, 0.923), (30.28, 0.920), None, None, None],
    },
}  # fmt: skip
RATIOS = [16, 64, 256, 1024, 3000]
ZSTD = {"hipct": 1.20, "ct_head": 1.95}


def methods(codecs):
    """name -> (function reproducing BASELINES.md, published column)."""
    return {
        "hevc (integer CRF)": (lambda v, b: codecs.hevc(v, b, refine=0), "hevc"),
        "hevc (fractional CRF, rd.py)": (codecs.hevc, "hevc"),
        "hevc_lean (rd.py)": (codecs.hevc_lean, "hevc"),
        "h264 (gray10le decode, integer CRF)": (
            lambda v, b: codecs.h264(v, b, decode_as_gray=True, refine=0),
            "h264",
        ),
        "h264 (luma decode, rd.py)": (codecs.h264, "h264"),
        "jpeg2000 (JP2)": (codecs.jpeg2000, "jpeg2000"),
        "jpeg2000_j2k (rd.py)": (codecs.jpeg2000_j2k, "jpeg2000"),
        "decimate": (codecs.decimate, "decimate"),
        "hevc_ds2 (integer CRF)": (lambda v, b: codecs.hevc_ds2(v, b, refine=0), "hevc_ds2"),
    }


def _fmt(cell) -> str:
    return "cannot" if cell is None else f"{cell[0]:.2f} / {cell[1]:.3f}"


def _row_line(row: dict) -> str:
    published, ours = row["published"], row["ours"]
    if ours is None:
        text, delta = "cannot", ""
    else:
        text = f"{_fmt(ours)} ({row['bytes']})"
        delta = f"{ours[0] - published[0]:+.2f}" if published else "n/a"
    return f"| {row['ratio']}x | {row['method']} | {text} | {_fmt(published)} | {delta} |"


def render(record: dict, ffmpeg: str) -> str:
    lines = [
        "# Reproduction of ../shared/BASELINES.md",
        "",
        f"Command: `{record['command']}`  ",
        f"Commit: `{record['commit']}`{' (dirty tree)' if record['dirty'] else ''}, "
        f"machine: {record['machine'].get('cpu_model', '')}"
        f" ({record['machine']['cpu_count']} CPUs), {ffmpeg}, "
        f"wall time {record['wall_seconds']:.0f} s.",
    ]
    for update in record.get("updates", []):
        lines.append(
            f"Rows {', '.join(update['only'])} rerun by `{update['command']}` at commit "
            f"`{update['commit']}`."
        )
    lines += [
        "",
        "Rows marked `rd.py` are the settings of the rate–distortion tables (stronger or "
        "corrected); the others follow BASELINES.md's method.",
    ]
    order = list(methods(load_codecs()))
    for name, zstd in record["zstd"].items():
        lines += [
            f"\n### {name}: zstd-19 lossless {zstd:.2f}x (BASELINES.md {ZSTD[name]:.2f}x)\n",
            "| ratio | method | ours PSNR / SSIM (bytes) | BASELINES.md | ΔPSNR |",
            "|---|---|---|---|---|",
        ]
        rows = [r for r in record["rows"] if r["volume"] == name]
        rows.sort(key=lambda r: (r["ratio"], order.index(r["method"])))
        lines += [_row_line(r) for r in rows]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--volumes", nargs="+", default=list(PUBLISHED))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/baselines-check.json"))
    parser.add_argument("--markdown", type=Path, default=None)
    parser.add_argument(
        "--only",
        nargs="+",
        default=None,
        help="rerun only these method labels and merge them into the existing --out JSON",
    )
    args = parser.parse_args(argv)
    codecs = load_codecs()
    table = methods(codecs)
    if args.only:
        unknown = set(args.only) - set(table)
        if unknown:
            raise SystemExit(f"unknown labels {sorted(unknown)}; choose from {list(table)}")
        table = {k: v for k, v in table.items() if k in args.only}
    t_start = time.perf_counter()
    rows, zstd = [], {}
    for name in args.volumes:
        vol = load_volume(name)
        nbytes, _ = codecs.zstd_lossless(vol)
        zstd[name] = vol.nbytes / nbytes
        for i, ratio in enumerate(RATIOS):
            budget = vol.nbytes // ratio
            for label, (fn, column) in table.items():
                t0 = time.perf_counter()
                result = fn(vol, budget)
                row = {
                    "volume": name,
                    "ratio": ratio,
                    "budget_bytes": budget,
                    "method": label,
                    "published": PUBLISHED[name][column][i],
                    "seconds": time.perf_counter() - t0,
                    "ours": None,
                }
                if result is not None:
                    q = quality(vol, result[1])
                    row.update(bytes=result[0], ours=(q["psnr"], q["ssim"]), **q)
                rows.append(row)
                print(_row_line(row), f"[{row['seconds']:.1f} s]", flush=True)
    wall = time.perf_counter() - t_start
    if args.only:
        record = json.loads(args.out.read_text())
        record["zstd"] = {**record.get("zstd", {}), **zstd}
        fresh = {(r["volume"], r["ratio"], r["method"]) for r in rows}
        record["rows"] = [
            r for r in record["rows"] if (r["volume"], r["ratio"], r["method"]) not in fresh
        ] + rows
        update = provenance("cpu")
        record.setdefault("updates", []).append(
            {"only": args.only, "command": update["command"], "commit": update["commit"]}
        )
    else:
        record = {"rows": rows, "zstd": zstd, "wall_seconds": wall, **provenance("cpu")}
    write_json(args.out, record)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(render(record, codecs.ffmpeg_version()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
