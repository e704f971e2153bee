"""A/B of a routed grid model's decode dispatch: ``Synthesis.forward`` (the training path: a
counting sort of the assignments, their inverse permutation, the balance loss) against
``Synthesis.infer`` (a mask per expert, session 15). Each volume is compressed with 4 experts
and the family's auto top-k (2) for a few steps (decode cost depends on the model's shape, not
its training), then decoded whole by ``decode_region``, alternating, best of 5. Timed: run on
an idle machine.

    python benchmarks/research/grid_routed_decode_ab.py macaque ct_head hipct mri4d
"""

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import napari_moec
from _common import load_volume
from napari_moec.families.grid.decode import decode_region
from napari_moec.families.grid.model import Synthesis


def through_forward(self, f, coords):
    value, _, _, top1 = self(f, coords)
    return value, top1


def main() -> None:
    torch.set_num_threads(2)
    masked = Synthesis.infer
    for name in sys.argv[1:]:
        x = load_volume(name)
        c = napari_moec.compress(x, ratio=256, steps=30, threads=1, num_experts=4)
        stored = napari_moec.Compressed.from_bytes(c.data)
        stored.decode()
        model = stored._model
        best = {"forward": float("inf"), "infer": float("inf")}
        for _ in range(5):
            for label, fn in (("forward", through_forward), ("infer", masked)):
                Synthesis.infer = fn
                t0 = time.perf_counter()
                decode_region(model)
                best[label] = min(best[label], time.perf_counter() - t0)
        Synthesis.infer = masked
        print(name, {k: f"{v:.3f} s, {x.size / v / 1e6:.2f} Mvoxel/s" for k, v in best.items()})


if __name__ == "__main__":
    main()
