"""The golden grid-family file (format 1.0, ``"f": "grid"``): built from seeded integers, no
training, so the same bytes come out on any machine (regenerate only when deliberately
changing the grid payload: never for 1.0).

    python tests/data/make_golden_grid.py [cbc]      (the default: cbc only; cb is pinned)

golden_grid_v1.moec          the file: 12x14x10 uint16, 3 latent levels from full resolution
                             (the first, 1680 latents, uses checkerboard contexts), 2 experts
                             (top-1), so router, experts and decoder are all stored
golden_grid_v1.sha256        sha256 of the file, then of its dequantized float32 arrays
                             (integers x float16 steps: exact on every platform)
golden_grid_v1_decoded.npy   its decoded voxels; a decode may differ by 1 level (float kernels
                             round differently across CPUs and versions)
golden_grid_cbc_v1.*         the same integers with the coarse contexts (``"cbc"``, context 3:
                             the first level's even latents by the second level's buckets)

The model's integers are drawn from ``numpy.random.default_rng(2026)``: smooth-ish latents
(small integers, ~40% zero) and int8-range network weights, so the stream exercises every
part of the payload (several entropy models, a radius above 127, the checkerboard buckets).
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
SHAPE = (12, 14, 10)
GRID = {"num_levels": 3, "first_level": 0, "hidden": 6, "num_experts": 2, "gate_hidden": 8}


#: The golden files by context: the stem of their files.
STEMS = {"cb": "golden_grid_v1", "cbc": "golden_grid_cbc_v1"}


def golden_config(context: str = "cb"):
    from napari_moec.families.grid.config import GridConfig

    return GridConfig(SHAPE, **GRID, context=context)


def golden_grid_file(context: str = "cb") -> bytes:
    """The golden file's bytes, written by today's code from the seeded integers."""
    from napari_moec.config import QuantConfig
    from napari_moec.families.grid.config import mlp_layout
    from napari_moec.families.grid.payload import pack_payload
    from napari_moec.format import Header, frame

    cfg = golden_config(context)
    rng = np.random.default_rng(2026)
    latents = []
    for g in cfg.grid_shapes:
        smooth = np.cumsum(rng.normal(size=g), axis=-1) * 0.8
        keep = rng.random(g) < 0.6
        latents.append((smooth * keep).round().astype(np.int32))
    latents[0][0, 0, 0] = 300  # a radius above int8's: the u16 radius is exercised
    weights = [rng.integers(-127, 128, size=s).astype(np.int32) for _, s in mlp_layout(cfg)]
    scales = [float(np.float16(2.0 ** -(8 + i % 2))) for i in range(len(weights))]
    payload = pack_payload(cfg, latents, weights, scales, latent_step=0.125)
    header = Header(
        shape=SHAPE,
        axes="ZYX",
        dtype="uint16",
        vmin=100.0,
        vmax=4100.0,
        model=cfg,
        quant=QuantConfig("int8"),
        spacing=(2.0, 0.5, 0.5),
        unit="um",
        family="grid",
    )
    return frame(header, payload)


def arrays_digest(weights: dict[str, np.ndarray]) -> str:
    """sha256 over the dequantized arrays (name, little-endian float32 bytes), in file order."""
    h = hashlib.sha256()
    for name, value in weights.items():
        h.update(name.encode())
        h.update(np.asarray(value, dtype="<f4").tobytes())
    return h.hexdigest()


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parents[1] / "src"))
    import napari_moec as nm
    from napari_moec.format import unpack

    for context in sys.argv[1:] or ["cbc"]:  # never "cb" again (format 1.0 is pinned)
        stem = STEMS[context]
        data = golden_grid_file(context)
        path = HERE / f"{stem}.moec"
        path.write_bytes(data)
        _, weights = unpack(data)
        file_hash = hashlib.sha256(data).hexdigest()
        (HERE / f"{stem}.sha256").write_text(
            f"{file_hash}  file\n{arrays_digest(weights)}  dequantized arrays\n"
        )
        np.save(HERE / f"{stem}_decoded.npy", nm.load(path).decode())
        print(stem, len(data), file_hash)
