"""Writes ``correction_v1.bin``: a version-1 correction stream (committed once, on the commit
before version 2 existed) that every later reader must decode to the same codes.

    PYTHONPATH=src python tests/data/make_correction_v1.py
"""

from pathlib import Path

import numpy as np

from napari_moec.correction import encode

HERE = Path(__file__).parent


def sample() -> tuple[np.ndarray, np.ndarray]:
    """A 4D uint16 volume (two 3D chunks per time point) and a noisy prediction of it."""
    rng = np.random.default_rng(23)
    z, y, x = np.meshgrid(*(np.arange(n) for n in (10, 12, 9)), indexing="ij")
    base = 1000 + 400 * np.sin(z / 3.0) * np.cos(y / 4.0) + 30 * x
    volume = np.stack([base, base[::-1]]).astype(np.uint16)
    prediction = volume + rng.normal(0, 25, volume.shape)
    return volume, prediction


if __name__ == "__main__":
    volume, prediction = sample()
    (HERE / "correction_v1.bin").write_bytes(encode(volume, prediction, 12.0, chunk=(4, 8, 8)))
    # The codes its version-1 reader decoded, the reference every later reader must match.
    from napari_moec.correction import codes, parse

    stream = parse((HERE / "correction_v1.bin").read_bytes(), volume.shape, volume.dtype)
    np.save(HERE / "correction_v1_codes.npy", codes(stream).astype(np.int8))
