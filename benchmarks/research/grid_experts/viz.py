"""Figures: python viz.py curves | python viz.py slices FILE.moeg VOLUME OUT.png"""
import glob
import json
import os
import sys

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import tifffile  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run import DATA, VOLUMES  # noqa: E402

BAR = {("hipct", 64): 33.39, ("hipct", 256): 31.84, ("hipct", 1024): 24.40 + 3,
       ("ct_head", 64): 36.30, ("ct_head", 256): 28.96, ("ct_head", 1024): 22.04 + 3,
       ("mri4d", 64): 28.88, ("mri4d", 256): 22.87 + 3, ("mri4d", 1024): 19.64 + 3}
MOEC = {("hipct", 64): 31.71, ("hipct", 256): 30.85, ("hipct", 1024): 28.80,
        ("ct_head", 64): 30.31, ("ct_head", 256): 27.82, ("ct_head", 1024): 25.93,
        ("mri4d", 64): 28.93, ("mri4d", 256): 26.44, ("mri4d", 1024): 23.25}


def curves():
    fig, axes = plt.subplots(3, 3, figsize=(13, 10))
    for i, v in enumerate(["hipct", "ct_head", "mri4d"]):
        for j, q in enumerate([64, 256, 1024]):
            ax = axes[i, j]
            for t, style in [(300, "-o"), (150, "-s"), (60, "-^")]:
                p = f"results/main_{v}_{q}_t{t}.json"
                if os.path.exists(p):
                    r = json.load(open(p))
                    ax.plot([c["cpu_s"] for c in r["curve"]], [c["psnr"] for c in r["curve"]],
                            style, ms=3, label=f"GridMoE, {t}-s schedule")
            ax.axhline(BAR[(v, q)], color="k", ls="--", label="bar (classical / +3 dB)")
            ax.axhline(MOEC[(v, q)], color="r", ls=":", label="SIREN-MoE today")
            ax.set_title(f"{v} {q}x")
            ax.set_xlabel("training CPU-s (1 thread)")
            ax.set_ylabel("PSNR of file (dB)")
            ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig("curves.png", dpi=90)


def slices(path, vol, out):
    from gridmoe.decode import decode_file
    data = open(path, "rb").read()
    orig = tifffile.imread(DATA + VOLUMES[vol])
    dec = decode_file(data)
    lab = decode_file(data, labels=True)
    if orig.ndim == 4:
        orig, dec, lab = orig[1], dec[1], lab[1]
    views = [(orig.shape[0] // 2, slice(None), slice(None)), (slice(None), orig.shape[1] // 2, slice(None))]
    fig, axes = plt.subplots(2, 3, figsize=(10, 6.5))
    for r, v in enumerate(views):
        for c, (img, title, kw) in enumerate([(orig, "original", {"cmap": "gray"}),
                                              (dec, "decoded", {"cmap": "gray"}),
                                              (lab, "top-1 expert", {"cmap": "tab10", "vmin": 0, "vmax": 9})]):
            axes[r, c].imshow(img[v], **kw)
            axes[r, c].set_title(title)
            axes[r, c].axis("off")
    fig.suptitle(os.path.basename(path))
    fig.tight_layout()
    fig.savefig(out, dpi=80)


if __name__ == "__main__":
    if sys.argv[1] == "curves":
        curves()
    else:
        slices(*sys.argv[2:5])
