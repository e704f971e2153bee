"""The rounding noise of the latents' training (``families.grid.noise``): uniform on
[-1/2, 1/2), a new field every step, the grids' shapes, reproducible from the generator."""

from __future__ import annotations

import itertools

import numpy as np
import torch

from napari_moec.families.grid.config import GridConfig
from napari_moec.families.grid.noise import MIN_OFFSETS, LatentNoise

SHAPES = GridConfig((9, 12, 7), num_levels=3).grid_shapes


def _fields(seed: int, count: int) -> list[np.ndarray]:
    noise = LatentNoise(SHAPES, torch.Generator().manual_seed(seed))
    out = []
    for _ in range(count):
        field = noise.draw()
        assert [tuple(u.shape) for u in field] == SHAPES
        out.append(np.concatenate([u.numpy().ravel() for u in field]))
    return out


def test_fields_are_uniform_and_change_every_step():
    fields = _fields(0, 200)
    values = np.stack(fields)
    assert values.min() >= -0.5 and values.max() < 0.5
    # 200 x 1,000-odd draws: mean and variance of U(-1/2, 1/2) within ~4 standard errors
    assert abs(values.mean()) < 4 * np.sqrt(1 / 12 / values.size)
    assert abs(values.var() - 1 / 12) < 0.002
    # within a field, its values are independent draws (no structure along the latents)
    lag = np.corrcoef(values[:, :-1].ravel(), values[:, 1:].ravel())[0, 1]
    assert abs(lag) < 0.02
    # successive fields differ at (nearly) every latent, as fresh draws do
    for a, b in itertools.pairwise(fields):
        assert np.mean(a == b) < 0.01
    # one latent's noise across steps is uniform too, not a fixed value
    one = values[:, 5]
    assert one.std() > 0.2 and len(np.unique(one)) > 190


def test_the_same_generator_gives_the_same_fields():
    for a, b in zip(_fields(3, 5), _fields(3, 5), strict=True):
        assert np.array_equal(a, b)
    assert not np.array_equal(_fields(3, 1)[0], _fields(4, 1)[0])


def test_the_table_offers_a_million_fields_for_4_mb_besides_the_latents():
    for shapes in (SHAPES, [(300, 200, 100), (150, 100, 50)]):
        noise = LatentNoise(shapes, torch.Generator().manual_seed(0))
        assert noise.offsets == MIN_OFFSETS + 1
        assert noise.table is not None and noise.table.numel() == noise.total + MIN_OFFSETS
