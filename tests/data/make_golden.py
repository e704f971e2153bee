"""Regenerate tests/data/golden_v1.moec (only when deliberately changing format v1.0: never).

python tests/data/make_golden.py
"""

import hashlib
import sys
from pathlib import Path

here = Path(__file__).parent
sys.path.insert(0, str(here.parent))

import napari_moec as nm  # noqa: E402
from conftest import smooth_volume  # noqa: E402

vol = smooth_volume((12, 12, 12), seed=3)
c = nm.compress(vol, 8, train=nm.TrainConfig(steps=30, batch_size=1024), spacing=(2, 1, 1))
c.save(here / "golden_v1.moec")
digest = hashlib.sha256(c.decode().tobytes()).hexdigest()
(here / "golden_v1.sha256").write_text(f"{digest}  decoded uint16 voxels of golden_v1.moec\n")
print(c.nbytes, digest)
