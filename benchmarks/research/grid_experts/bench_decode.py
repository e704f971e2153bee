"""Decode speed of GridMoE files (1 thread): python bench_decode.py results/*.moeg
Entropy decoding (unpack), whole volume, a stride-4 view, a 16^3 ROI, the label map."""
import json
import sys
import time

import numpy as np
import torch

sys.path.insert(0, ".")
from gridmoe.coding import load_model, unpack  # noqa: E402
from gridmoe.decode import decode_region  # noqa: E402

torch.set_num_threads(1)


def timed(f, reps=3):
    f()
    t = time.perf_counter()
    for _ in range(reps):
        out = f()
    return (time.perf_counter() - t) / reps, out


rows = []
for path in sys.argv[1:]:
    data = open(path, "rb").read()
    t_unpack, _ = timed(lambda: unpack(data))
    model, _ = load_model(data)
    shape = model.cfg.shape
    n = int(np.prod(shape))
    t_full, _ = timed(lambda: decode_region(model))
    stride = [(0, s, 1) if i < len(shape) - 3 else (0, s, 4) for i, s in enumerate(shape)]
    t_s4, v4 = timed(lambda: decode_region(model, stride))
    roi = [(0, 1, 1) if i < len(shape) - 3 else (s // 2 - 8, s // 2 + 8, 1)
           for i, s in enumerate(shape)]
    t_roi, vr = timed(lambda: decode_region(model, roi))
    t_lab, _ = timed(lambda: decode_region(model, labels=True))
    row = {"file": path, "bytes": len(data), "shape": shape, "experts": model.cfg.num_experts,
           "entropy_decode_ms": round(1000 * t_unpack, 1),
           "full_Mvox_s": round(n / t_full / 1e6, 2),
           "stride4_Mvox_s": round(v4.size / t_s4 / 1e6, 2),
           "roi16_ms": round(1000 * t_roi, 2), "labels_Mvox_s": round(n / t_lab / 1e6, 2)}
    rows.append(row)
    print(json.dumps(row), flush=True)
