"""Rate–distortion: napari-moec against the classical codecs at the same byte budgets.

One JSON per (volume, ratio, method) under ``--out``: bytes actually written, achieved ratio,
bits per voxel, PSNR over the original's data range, 3D SSIM, seconds, and the provenance
(command, commit, machine). The budget is ``floor(original bytes / ratio)`` for every method.

Method ``moec`` calls ``napari_moec.compress``, saves the ``.moec`` file, reloads it with
``napari_moec.load`` and decodes *from the file*: the bytes are the file's size on disk and
the quality is the quality of what the file holds. Ratios where no network fits the budget
are recorded with status "no network fits" and the library's reason. The classical methods
are in ``benchmarks/codecs.py``; ``zstd`` (lossless, no budget) is recorded once per volume.

Existing JSONs are kept (the run is skipped) unless ``--force``.

Example::

    python benchmarks/rd.py --volumes hipct ct_head mri4d macaque \\
        --ratios 16 64 256 1024 3000 6000 --steps auto --out benchmarks/out/rd
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    CLASSICAL,
    OUT,
    SPACING,
    VOLUMES,
    compress_and_measure,
    load_codecs,
    load_volume,
    provenance,
    quality,
    write_json,
)

ALL_METHODS = ["moec", *CLASSICAL, "zstd"]


def _base(name: str, vol: np.ndarray, ratio, method: str) -> dict:
    return {
        "volume": name,
        "file": VOLUMES[name],
        "shape": list(vol.shape),
        "dtype": vol.dtype.name,
        "original_bytes": int(vol.nbytes),
        "target_ratio": ratio,
        "budget_bytes": None if ratio is None else int(vol.nbytes // ratio),
        "method": method,
    }


def _finish(
    record: dict, vol: np.ndarray, nbytes: int, recon: np.ndarray, measured: dict | None = None
) -> dict:
    """Record an encode: bytes, ratio, bits per voxel and ``measured`` (else :func:`quality`)."""
    if recon.shape != vol.shape or recon.dtype != vol.dtype:
        raise RuntimeError(f"{record['method']}: reconstruction {recon.shape} {recon.dtype}")
    if record["budget_bytes"] is not None and nbytes > record["budget_bytes"]:
        raise RuntimeError(f"{record['method']}: {nbytes} bytes over the budget")
    record.update(
        status="ok",
        bytes=int(nbytes),
        ratio=vol.nbytes / nbytes,
        bits_per_voxel=8.0 * nbytes / vol.size,
        **(quality(vol, recon) if measured is None else measured),
    )
    return record


def run_classical(name: str, vol: np.ndarray, ratio: float, method: str) -> dict:
    codecs = load_codecs()
    record = _base(name, vol, ratio, method)
    t0 = time.perf_counter()
    result = codecs.METHODS[method](vol, record["budget_bytes"])
    record["seconds"] = time.perf_counter() - t0
    if method in codecs.scientific.METHODS:
        record["versions"] = codecs.scientific.versions()
    if result is None:
        record.update(status="cannot", reason="even the lowest quality does not fit the budget")
        return record
    return _finish(record, vol, *result)


def run_zstd(name: str, vol: np.ndarray) -> dict:
    codecs = load_codecs()
    record = _base(name, vol, None, "zstd")
    t0 = time.perf_counter()
    nbytes, recon = codecs.zstd_lossless(vol)
    record["seconds"] = time.perf_counter() - t0
    if not np.array_equal(recon, vol):
        raise RuntimeError("zstd round trip is not lossless")
    return _finish(record, vol, nbytes, recon)


def run_moec(name: str, vol: np.ndarray, ratio: float, args, folder: Path) -> dict:
    from napari_moec import TrainConfig

    record = _base(name, vol, ratio, "moec")
    record["options"] = {
        "num_experts": args.experts,
        "top_k": args.top_k,
        "steps": "auto" if args.steps is None else args.steps,
        "time_limit": args.time_limit,
        "seed": args.seed,
        "precision": args.precision,
        "device": args.device,
        "threads": args.threads,
    }
    run = compress_and_measure(
        vol,
        ratio,
        path=folder / f"{name}_{_ratio_tag(ratio)}.moec",
        num_experts=args.experts,
        top_k=args.top_k,
        train=TrainConfig(steps=args.steps, time_limit=args.time_limit, seed=args.seed),
        precision=args.precision,
        device=args.device,
        spacing=SPACING[name],
        threads=args.threads,
    )
    record["seconds"] = run.seconds
    if run.status != "ok":
        record.update(status=run.status, reason=run.reason)
        return record
    record["decode_seconds"] = run.decode_seconds
    record["moec_file"] = str(run.path)
    record["report"] = run.compressed.report.to_dict()
    return _finish(record, vol, run.file_bytes, run.decoded, run.quality)


def _ratio_tag(ratio) -> str:
    return "lossless" if ratio is None else f"{ratio:g}x"


def _steps(text: str) -> int | None:
    return None if text == "auto" else int(text)


def json_path(out: Path, name: str, ratio, method: str) -> Path:
    return out / name / f"{name}_{_ratio_tag(ratio)}_{method}.json"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--volumes", nargs="+", default=list(VOLUMES), choices=list(VOLUMES))
    parser.add_argument("--ratios", nargs="+", type=float, default=[16, 64, 256, 1024, 3000, 6000])
    parser.add_argument("--methods", nargs="+", default=ALL_METHODS, choices=ALL_METHODS)
    parser.add_argument(
        "--steps",
        type=_steps,
        default=None,
        help="moec training steps, or 'auto' (the default: the library's, the family's choice)",
    )
    parser.add_argument("--time-limit", type=float, default=None, help="moec seconds per run")
    parser.add_argument("--experts", type=int, default=None, help="default: the library's")
    parser.add_argument("--top-k", type=int, default=1)
    parser.add_argument("--precision", default="int8")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="moec device: cpu, cuda (default auto)")
    parser.add_argument("--threads", type=int, default=None, help="moec CPU threads")
    parser.add_argument("--out", type=Path, default=OUT / "rd")
    parser.add_argument("--moec-dir", type=Path, default=OUT / "moec-files")
    parser.add_argument("--force", action="store_true", help="rerun runs whose JSON exists")
    args = parser.parse_args(argv)

    for name in args.volumes:
        vol = load_volume(name)
        jobs = [(None, "zstd")] if "zstd" in args.methods else []
        jobs += [(r, m) for r in args.ratios for m in args.methods if m != "zstd"]
        for ratio, method in jobs:
            ratio = None if ratio is None else (int(ratio) if ratio == int(ratio) else ratio)
            path = json_path(args.out, name, ratio, method)
            if path.exists() and not args.force:
                print(f"skip {path} (exists; --force to rerun)", flush=True)
                continue
            if method == "zstd":
                record = run_zstd(name, vol)
            elif method == "moec":
                record = run_moec(name, vol, ratio, args, args.moec_dir)
            else:
                record = run_classical(name, vol, ratio, method)
            device = record.get("report", {}).get("device") if method == "moec" else "cpu"
            record.update(provenance(device))
            write_json(path, record)
            quality_text = (
                f"{record['psnr']:.2f} dB / {record['ssim']:.3f} ({record['bytes']} B)"
                if record["status"] == "ok"
                else record["status"]
            )
            print(
                f"{name:8s} {_ratio_tag(ratio):>8s} {method:13s} {quality_text}"
                f"  [{record['seconds']:.1f} s]",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
