"""Run one GridMoE experiment and store its curve: python run.py VOLUME RATIO [key=value ...]

auto=1: config from gridmoe.sizing.auto_config (+ overrides); default: GridConfig defaults.
Keys: any GridConfig field (num_levels, first_level, kernel, hidden, num_experts, top_k,
expert_layers, gate_hidden, act) or TrainSettings field (time_limit, lr_latent, ...), plus
name=... (result file stem). Results: results/<name>.json and results/<name>.moeg.
"""
import json
import os
import sys
import time
from dataclasses import fields

import numpy as np
import tifffile
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gridmoe.model import GridConfig  # noqa: E402
from gridmoe.sizing import auto_config  # noqa: E402
from gridmoe.train import TrainSettings, train  # noqa: E402

DATA = str(__import__("pathlib").Path(__import__("os").environ.get("MOEC_DATA", __import__("pathlib").Path(__file__).resolve().parents[3].parent / "shared" / "data"))) + "/"
VOLUMES = {
    "hipct": "hipct_brain_sci_64.tif",
    "ct_head": "ct_head_vtk_headsq.tif",
    "mri4d": "mri_4d_epi_nibabel_afni_example4d.tif",
    "macaque": "mri_t1_macaque_inia19_mricron.tif",
}


def main(argv):
    vol_name, ratio = argv[0], float(argv[1])
    kv = dict(a.split("=", 1) for a in argv[2:])
    name = kv.pop("name", f"{vol_name}_{int(ratio)}")
    volume = tifffile.imread(DATA + VOLUMES[vol_name])
    budget = int(volume.nbytes // ratio)
    cfg_fields = {f.name: f.type for f in fields(GridConfig)} | {"auto": int}
    st_fields = {f.name for f in fields(TrainSettings)}
    ckw, skw = {}, {}
    for k, v in kv.items():
        try:
            val = int(v)
        except ValueError:
            try:
                val = float(v)
            except ValueError:
                val = v
        if k in cfg_fields:
            ckw[k] = val
        elif k in st_fields:
            skw[k] = val
        else:
            raise SystemExit(f"unknown key {k}")
    if ckw.pop("auto", 0):
        cfg = auto_config(tuple(volume.shape), budget, **ckw)
    else:
        cfg = GridConfig(shape=tuple(volume.shape), **ckw)
    st = TrainSettings(**skw)
    torch.set_num_threads(1)
    os.makedirs("results", exist_ok=True)
    log = open(f"logs/{name}.log", "w")

    def logger(rec):
        line = json.dumps(rec)
        print(line, flush=True)
        log.write(line + "\n")
        log.flush()

    print(f"{name}: budget {budget} B, config {cfg} settings {skw}", flush=True)
    res = train(volume, cfg, budget, st, log=logger)
    data = res.pop("file")
    open(f"results/{name}.moeg", "wb").write(data)
    res.update(volume=vol_name, ratio=ratio, budget=budget, name=name,
               finished=time.strftime("%Y-%m-%d %H:%M:%S"))
    json.dump(res, open(f"results/{name}.json", "w"), indent=1)
    last = res["curve"][-1]
    print(f"DONE {name}: psnr {last['psnr']} bytes {last['bytes']}/{budget} steps {res['steps']} "
          f"{res['ms_per_step']:.1f} ms/step labels {res['label_fractions']}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
