"""A/B of the dropless decode's combine: the old one (scatter the experts' hidden features
back to voxel order, combine, then the decoder) against the current one (the decoder inside each
expert's block, MoESiren._decode_grouped). Random weights, a whole 64³ grid, alternating, best of
3; prints the times and the largest difference of the decoded values.

    python benchmarks/research/decode_combine_ab.py 1   # torch threads
"""

import sys
import time
import types

import torch

from napari_moec.config import ModelConfig
from napari_moec.decode import evaluate
from napari_moec.families.siren.moe import MoEOutput, MoESiren


def old_grouped(self, features, routing):
    cfg = self.config
    batch = features.shape[0]
    k = cfg.top_k
    flat = routing.expert_index.t().reshape(-1)
    order = torch.argsort(flat, stable=True)
    counts = torch.bincount(flat, minlength=cfg.num_experts).tolist()
    rows = features.index_select(0, order % batch)
    out = torch.empty_like(rows)
    begin = 0
    for e, c in enumerate(counts):
        if c:
            out[begin : begin + c] = self.experts.run_one(e, rows[begin : begin + c])
        begin += c
    picked = torch.empty_like(out)
    picked[order] = out
    combined = (picked.view(k, batch, -1) * routing.weight.t()[..., None]).sum(0)
    kept = torch.ones(batch, dtype=torch.bool)
    load = torch.bincount(routing.expert_index[:, 0], minlength=cfg.num_experts).float() / batch
    return MoEOutput(self.decoder(combined), routing.aux_loss, kept, load)


threads = int(sys.argv[1]) if len(sys.argv) > 1 else 1
torch.set_num_threads(threads)
for width, experts in ((35, 2), (43, 2), (64, 1), (16, 2)):
    torch.manual_seed(0)
    m = MoESiren(
        ModelConfig(
            hidden_features=width, num_experts=experts, gate_hidden=width // 2, w0_first=20.0
        )
    ).eval()
    new = m._decode_grouped
    shape = (64, 64, 64)
    res = {}
    for name, fn in (("old", types.MethodType(old_grouped, m)), ("new", new)) * 3:
        m._decode_grouped = fn
        t0 = time.perf_counter()
        v = evaluate(m, shape)
        dt = time.perf_counter() - t0
        res[name] = min(res.get(name, 1e9), dt)
        res[name + "_v"] = v
    diff = float(abs(res["old_v"] - res["new_v"]).max())
    print(
        f"width {width} experts {experts} threads {threads}: "
        f"old {res['old'] * 1e3:.0f} ms new {res['new'] * 1e3:.0f} ms "
        f"({262144 / res['new'] / 1e6:.2f} Mvox/s) max diff {diff:.2e}"
    )
