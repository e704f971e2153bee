"""Print a compact table of results/*.json: final PSNR, ms/step, curve points."""
import json, glob, sys, os
pat = sys.argv[1] if len(sys.argv) > 1 else '*'
for f in sorted(glob.glob(f'results/{pat}.json')):
    d = json.load(open(f))
    fin = d['final']
    pts = ' '.join(f"{c['cpu']:.0f}:{c['psnr']:.2f}" for c in d['curve'] if 'psnr' in c and not c.get('final'))
    div = ' DIVERGED' if any(c.get('diverged') for c in d['curve']) else ''
    print(f"{d['name']:34s} final {fin['psnr']:.3f} @ {fin['cpu']:.0f}s/{fin['step']}st  {d['ms_per_step']:.1f}ms/st  [{pts}]{div}")
