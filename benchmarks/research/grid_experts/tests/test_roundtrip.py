"""Round-trip and random-access checks: python tests/test_roundtrip.py"""
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from gridmoe.coding import pack, load_model, quantize_latents  # noqa: E402
from gridmoe.decode import decode_region  # noqa: E402
from gridmoe.model import GridConfig, GridMoE  # noqa: E402

torch.manual_seed(0)
for shape, kw in [((21, 30, 17), dict(context="cb", num_experts=3, top_k=2)),
                  ((3, 9, 14, 11), dict(context="cb", num_experts=2, grid_per_expert=1)),
                  ((40, 33, 9), dict(kernel="cubic")),
                  ((3, 25, 41, 33), dict(kernel="cubic", context="cb", num_experts=4))]:
    cfg = GridConfig(shape=shape, num_levels=4, **kw)
    m = GridMoE(cfg)
    with torch.no_grad():
        for y in m.grids.latents:
            y.copy_(torch.randn(y.shape) * 2 * (torch.rand(y.shape) < 0.4))
    data, info = pack(m, "uint16", 0.0, 1000.0, mlp_step=1.0)
    m2, meta = load_model(data)
    for a, q in zip(m2.grids.latents, quantize_latents(m)):
        assert np.array_equal(a.detach().numpy(), q.astype(np.float32)), "latents differ"
    full = decode_region(m2)
    region = [(1, n, 2) if n > 3 else (0, n, 1) for n in shape]
    part = decode_region(m2, region)
    sub = full[tuple(slice(*r) for r in region)]
    assert np.allclose(part, sub, atol=1e-5), np.abs(part - sub).max()
    lab = decode_region(m2, labels=True)
    print(shape, kw, "file", len(data), "B ok; labels", np.bincount(lab.ravel()))
print("all ok")
