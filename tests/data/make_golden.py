"""Regenerate the golden v1.0 fixtures (only when deliberately changing format v1.0: never).

    python tests/data/make_golden.py

golden_v1.moec          a v1.0 file
golden_v1.sha256        sha256 of its dequantized float32 weights (exact: integer decoding
                        and float16 scales involve no platform-dependent arithmetic)
golden_v1_decoded.npy   its decoded voxels; a decode may differ by 1 level (float kernels
                        round differently across CPUs and versions)
"""

import hashlib
import sys
from pathlib import Path

import numpy as np

here = Path(__file__).parent
sys.path.insert(0, str(here.parent))

import napari_moec as nm  # noqa: E402
from conftest import smooth_volume  # noqa: E402


def weights_digest(compressed) -> str:
    h = hashlib.sha256()
    for name, value in compressed.model.state_dict().items():
        h.update(name.encode())
        h.update(value.numpy().astype("<f4").tobytes())
    return h.hexdigest()


if __name__ == "__main__":
    if not (here / "golden_v1.moec").exists():
        vol = smooth_volume((12, 12, 12), seed=3)
        train = nm.TrainConfig(steps=30, batch_size=1024)
        nm.compress(vol, 8, train=train, spacing=(2, 1, 1)).save(here / "golden_v1.moec")
    c = nm.load(here / "golden_v1.moec")
    (here / "golden_v1.sha256").write_text(f"{weights_digest(c)}  dequantized weights\n")
    np.save(here / "golden_v1_decoded.npy", c.decode())
    print(c.nbytes, weights_digest(c))
