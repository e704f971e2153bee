"""The classical and scientific codecs on a tiled benchmark's volume (issue 24: "a 512³ volume
at 256x on 2 workers: at least the PSNR of HEVC on the same volume at equal bytes, measured with
benchmarks/codecs.py").

    python benchmarks/tiled_baseline.py --volume macaque-mirror --shape 512,512,512 \\
        --ratio 256 --methods hevc_lean hevc_ds2_lean sperr

The volume is the one ``benchmarks/tiled.py`` builds (the same ``.npy`` under ``--work``: a
shared volume mirrored to ``--shape``), each method gets ``floor(original bytes / ratio)``
bytes, tuned as in ``codecs.py``; the PSNR is over the volume's data range (SSIM is not
computed on volumes this size: 3D SSIM holds several float64 copies). One JSON per method in
``docs/benchmarks/data/tiled/baseline-<volume>-<shape>-<ratio>x-<method>.json``.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np

from _common import load_codecs, provenance, write_json
from tiled import DATA_OUT, WORK, build_volume


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--volume", default="macaque-mirror")
    parser.add_argument("--shape", default="512,512,512")
    parser.add_argument("--crop", default=None)
    parser.add_argument("--ratio", type=float, default=256.0)
    parser.add_argument("--methods", nargs="+", default=["hevc_lean"])
    parser.add_argument("--work", default=str(WORK))
    parser.add_argument("--out", default=str(DATA_OUT))
    args = parser.parse_args()
    from napari_moec.metrics import psnr

    path, _ = build_volume(args)
    volume = np.load(path)
    budget = math.floor(volume.nbytes / args.ratio)
    codecs = load_codecs()
    for method in args.methods:
        start = time.perf_counter()
        result = codecs.METHODS[method](volume, budget)
        seconds = time.perf_counter() - start
        shape = "x".join(map(str, volume.shape))
        tag = f"baseline-{args.volume}-{shape}-{args.ratio:g}x-{method}"
        record = {"kind": "baseline", "tag": tag, "volume": args.volume,
                  "shape": list(volume.shape), "dtype": volume.dtype.name, "method": method,
                  "ratio_target": args.ratio, "budget_bytes": budget,
                  "seconds": round(seconds, 1)}  # fmt: skip
        if result is None:
            record["status"] = "does not fit"
        else:
            nbytes, decoded = result
            record.update(status="ok", bytes=int(nbytes), ratio=volume.nbytes / nbytes,
                          psnr=round(psnr(volume, decoded), 3))  # fmt: skip
        record.update(provenance("cpu"))
        name = f"{tag}.json"
        write_json(Path(args.out) / name, record)
        print(name, record.get("psnr"), record.get("bytes"), f"{seconds:.0f} s", flush=True)


if __name__ == "__main__":
    main()
