import time, torch, resource, tifffile
torch.set_num_threads(1)
from napari_moec.training import Compressor
from napari_moec.sampling import flat_index_coords
from napari_moec.families.siren.moe import MoESiren
vol = tifffile.imread(__import__("os").path.join(__import__("os").environ.get("MOEC_DATA", str(__import__("pathlib").Path(__file__).resolve().parents[3].parent / "shared" / "data")), "hipct_brain_sci_64.tif"))
c = Compressor(vol, 64)
torch.manual_seed(0)
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
for _ in range(10): step()
f0=resource.getrusage(resource.RUSAGE_SELF).ru_minflt
t=time.thread_time()
for _ in range(60): step()
print('ms/step %.2f  minflt/step %.0f' % ((time.thread_time()-t)/60*1e3, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt-f0)/60))
