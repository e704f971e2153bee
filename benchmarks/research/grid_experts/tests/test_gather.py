"""The custom dispatch gather gives the same gradients as plain autograd indexing."""
import os, sys
import torch
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from gridmoe.model import GridConfig, MoESynthesis  # noqa: E402
import gridmoe.model as M  # noqa: E402

torch.manual_seed(0)
for kw in [dict(num_experts=3, top_k=2), dict(num_experts=3, top_k=1),
           dict(num_experts=2, top_k=1, grid_per_expert=1), dict(num_experts=3, top_k=2, grid_per_expert=1)]:
    cfg = GridConfig(shape=(5, 6, 7), num_levels=4, hidden=8, **kw)
    syn = MoESynthesis(cfg)
    n = cfg.num_experts
    f = torch.randn(200, n, 4) if cfg.grid_per_expert else torch.randn(200, 4)
    xyz = torch.randn(200, 3)
    grads = []
    for plain in (False, True):
        if plain:
            orig = M._GatherRows.apply
            M._GatherRows.apply = lambda src, idx, inv: src.index_select(0, idx)
        x = f.clone().requires_grad_(True)
        v, aux, load, top1 = syn(x, xyz)
        (v.square().sum() + aux).backward()
        grads.append(x.grad.clone())
        if plain:
            M._GatherRows.apply = orig
    assert torch.allclose(grads[0], grads[1], atol=1e-5), (grads[0] - grads[1]).abs().max()
    print(kw, "grad ok")
