import torch, time, resource, os, sys
torch.set_num_threads(1)
import harness, levers as L
from napari_moec.training import Compressor
from napari_moec.families.siren.moe import MoESiren
from napari_moec.sampling import flat_index_coords
L.keep_heap()
vol = harness.load(sys.argv[1]); c = Compressor(vol, float(sys.argv[2]), threads=1)
torch.manual_seed(0); m = MoESiren(c.header.model)
tgt = torch.from_numpy(c.normalization.apply(vol).reshape(-1))
opt = torch.optim.Adam(m.parameters(), lr=1e-3, fused=True)
fused = sys.argv[3] == '1'
def loss_fn(idx):
    x = flat_index_coords(idx, c.header.shape)
    out = L.fast_forward(m, x, 1.25, fused=fused)
    kept = out.kept.float()
    return (((out.value[:,0]-tgt[idx])**2)*kept).sum()/kept.sum() + 0.01*out.aux_loss
idx = torch.randint(tgt.numel(), (16384,))
ex = torch._dynamo.explain(loss_fn)(idx)
print('graphs', ex.graph_count, 'breaks', ex.graph_break_count)
for b in ex.break_reasons: print(' ', str(b.reason)[:300])
def ru():
    a=resource.getrusage(resource.RUSAGE_SELF); b=resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime+a.ru_stime+b.ru_utime+b.ru_stime
cl = torch.compile(loss_fn)
r0, w0 = ru(), time.perf_counter()
for _ in range(2):
    l = cl(torch.randint(tgt.numel(), (16384,))); opt.zero_grad(); l.backward(); opt.step()
print('compile process+children cpu %.1f wall %.1f' % (ru()-r0, time.perf_counter()-w0))
def bench(f, n=100):
    t=time.thread_time()
    for _ in range(n):
        l=f(torch.randint(tgt.numel(), (16384,))); opt.zero_grad(); l.backward(); opt.step()
    return (time.thread_time()-t)/n*1e3
print('eager ms %.2f compiled ms %.2f eager %.2f compiled %.2f' % (bench(loss_fn), bench(cl), bench(loss_fn), bench(cl)))
