"""Does numcodecs-wasm-tthresh decode its own streams of the macaque? (issue 23)

In ``rd.py`` every TTHRESH stream of the whole macaque (128x206x168 float32) at a target PSNR of
23.9 dB or more made the WebAssembly decoder trap (an Eigen index assertion). This encodes the
whole volume and three crops at one target and says which decode, to tell a size limit of the
build from a property of the data.

    python benchmarks/research/tthresh_macaque_decode.py [--psnr 40]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import load_volume
from scientific import _quiet_stdout


def main(argv=None) -> int:
    from numcodecs_wasm_tthresh import Tthresh

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--psnr", type=float, default=40.0)
    args = parser.parse_args(argv)
    vol = load_volume("macaque")
    cases = {
        "crop 64^3": vol[32:96, 64:128, 52:116],
        "every 2nd voxel": vol[::2, ::2, ::2],
        "crop, all of Z": vol[:, 64:128, 52:116],
        "whole volume": vol,
    }
    for name, part in cases.items():
        part = np.ascontiguousarray(part)
        with _quiet_stdout():
            stream = np.asarray(Tthresh(eb_mode="psnr", eb_psnr=args.psnr).encode(part))
        try:
            with _quiet_stdout():
                Tthresh(eb_mode="psnr", eb_psnr=1.0).decode(stream)
            verdict = "decodes"
        except Exception as exc:  # the WebAssembly trap surfaces as a bare Exception
            verdict = f"does not decode ({str(exc).splitlines()[0]})"
        print(f"{name:16s} {part.shape}: {stream.nbytes:,} B at {args.psnr:g} dB, {verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
