import torch, time
torch.set_num_threads(1)
def bench(f, n=50):
    for _ in range(5): f()
    t=time.thread_time()
    for _ in range(n): f()
    return (time.thread_time()-t)/n*1e3
for H in (16, 35, 64):
    x=torch.randn(2,10240,H); w=torch.randn(2,H,H); b=torch.randn(2,1,H)
    xb=x.bfloat16(); wb=w.bfloat16()
    fl=2*2*10240*H*H
    t1=bench(lambda: torch.baddbmm(b,x,w))
    t2=bench(lambda: torch.bmm(xb,wb))
    t3=bench(lambda: torch.bmm(x.bfloat16(),w.bfloat16()).float())
    try:
        t4=bench(lambda: torch.bmm(xb,wb,out_dtype=torch.float32))
    except Exception as e: t4=float('nan'); print(e)
    t5=bench(lambda: torch.sin(x)); t6=bench(lambda: x.cos().mul_(x)); t7=bench(lambda: torch.bmm(x.transpose(1,2), x))
    t8=bench(lambda: torch.bmm(x, w.transpose(1,2)))
    print(f"H={H} fp32 baddbmm {t1:.3f}ms ({fl/t1/1e6:.1f} GF/s) bf16 bmm {t2:.3f} bf16+casts {t3:.3f} outdtype {t4:.3f} | sin {t5:.3f} cos*g {t6:.3f} xTx {t7:.3f} x@wT {t8:.3f}")
a=torch.randn(2048,2048); 
t=bench(lambda: a@a, 10); print('2048 gemm fp32 GF/s', 2*2048**3/t/1e6)
ab=a.bfloat16(); t=bench(lambda: ab@ab, 10); print('2048 gemm bf16 GF/s', 2*2048**3/t/1e6)
