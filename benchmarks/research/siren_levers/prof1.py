import time, torch, numpy as np, tifffile, sys
torch.set_num_threads(1)
from napari_moec.training import Compressor
from napari_moec.sampling import flat_index_coords
from napari_moec.families.siren.moe import MoESiren
vol = tifffile.imread(__import__("os").path.join(__import__("os").environ.get("MOEC_DATA", str(__import__("pathlib").Path(__file__).resolve().parents[3].parent / "shared" / "data")), "hipct_brain_sci_64.tif"))
c = Compressor(vol, 64)
m = MoESiren(c.header.model)
opt = torch.optim.Adam(m.parameters(), lr=1e-3, fused=True)
tgt = torch.from_numpy(c.normalization.apply(vol).reshape(-1))
def step():
    idx = torch.randint(tgt.numel(), (16384,))
    x = flat_index_coords(idx, c.header.shape)
    out = m(x, 1.25)
    kept = out.kept.float()
    loss = (((out.value[:,0]-tgt[idx])**2)*kept).sum()/kept.sum() + 0.01*out.aux_loss
    opt.zero_grad(); loss.backward(); opt.step()
for _ in range(5): step()
from torch.profiler import profile, ProfilerActivity
with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as p:
    for _ in range(10): step()
print(p.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=40, max_name_column_width=30, max_shapes_column_width=70))
