"""Main results table for REPORT.md: python maketable.py"""
import json
import os

from viz import BAR, MOEC

VOLS = ["hipct", "ct_head", "mri4d"]
RATIOS = [64, 256, 1024]


def load(v, q, t):
    p = f"results/main_{v}_{q}_t{t}.json"
    return json.load(open(p)) if os.path.exists(p) else None


def at(r, t, best=False):
    """PSNR of the file at CPU time t of a run (last checkpoint <= t, or the best so far)."""
    pts = [c for c in r["curve"] if c["cpu_s"] <= t + 0.5]
    if not pts:
        return None
    return max(c["psnr"] for c in pts) if best else pts[-1]["psnr"]


print("| volume | ratio | budget B | file B (300 s) | 60-s run | 150-s run | 300-s run | 300-s run, best checkpoint | checkpoints of the 300-s run at 60 / 150 s | SIREN-MoE today | bar | config | ms/step |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for v in VOLS:
    for q in RATIOS:
        r60, r150, r300 = load(v, q, 60), load(v, q, 150), load(v, q, 300)
        ref = r300 or r60
        if ref is None:
            continue
        c = ref["config"]
        cfg = f'h{c["hidden"]} L{c["num_levels"]}@{c["first_level"]}'
        f = lambda r: f'{r["curve"][-1]["psnr"]:.2f}' if r else "–"  # noqa: E731
        mid = f"{at(r300, 60):.2f} / {at(r300, 150):.2f}" if r300 else "–"
        best = f"{at(r300, 300, True):.2f}" if r300 else "–"
        bar = BAR[(v, q)]
        print(f"| {v} | {q}x | {ref['budget']} | {r300['curve'][-1]['bytes'] if r300 else '–'} | "
              f"{f(r60)} | {f(r150)} | {f(r300)} | {best} | {mid} | {MOEC[(v, q)]:.2f} | "
              f"{bar:.2f} | {cfg} | {ref['ms_per_step']:.0f} |")
