"""Fitting an over-budget grid model into its bytes (issue 24): the zeroed latents are the ones
that cost the voxels least (a coarse level's latent spans many voxels), and a checkpoint and the
final fit score a coarser latent step beside the zeroing and keep the better."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from napari_moec.families.grid.config import GridConfig, mlp_layout
from napari_moec.families.grid.fit import (
    FINE_NETWORK_STEPS,
    NETWORK_PRECISION_SHARE,
    NETWORK_STEPS,
    fit_budget,
    fit_checkpoint,
    network_steps_for,
    pack_model,
    quantize_latents,
    quantize_weights,
)
from napari_moec.families.grid.model import GridModel
from napari_moec.families.grid.payload import pack_payload, unpack_payload
from napari_moec.families.grid.sizing import auto_config
from napari_moec.families.grid.train import GridTrainer, TrainSettings
from napari_moec.sampling import Normalization


def _model() -> GridModel:
    cfg = GridConfig(shape=(32, 32, 32), num_levels=3, first_level=1)
    return GridModel(cfg, generator=torch.Generator().manual_seed(0))


def test_zeroing_takes_fine_latents_before_coarse_ones():
    """The coarse levels' latents are the smaller (0.6 against 0.7), but each spans 8 or 64
    times the voxels of a fine one: zeroing the finest level's count takes the finest level
    and leaves the others whole (ranking by |y| took the coarse ones first)."""
    model = _model()
    with torch.no_grad():
        for i, y in enumerate(model.grids.latents):
            y.fill_(0.7 if i == 0 else 0.6)
    sizes = [y.numel() for y in model.grids.latents]
    assert sizes[0] > sizes[1] > sizes[2]  # level 0 is the finest
    ints = quantize_latents(model, zero_k=sizes[0])
    assert not ints[0].any()
    assert all((q == 1).all() for q in ints[1:])


def test_zeroing_ranks_by_the_error_it_adds_within_a_level():
    """Within a level the latent whose rounding already lost most (|y| nearest 0.5) goes first,
    and a latent rounding to 2 costs more than one rounding to 1."""
    model = _model()
    with torch.no_grad():
        for y in model.grids.latents:
            y.fill_(1.4)
        finest = model.grids.latents[0].view(-1)
        finest[:3] = torch.tensor([0.55, 0.9, 1.6])
    ints = quantize_latents(model, zero_k=2)
    flat = ints[0].ravel()
    assert list(flat[:3]) == [0, 0, 2]  # 0.55 and 0.9 go; 1.6 (q = 2) stays
    assert (flat[3:] == 1).all() and all((q == 1).all() for q in ints[1:])


@pytest.fixture(scope="module")
def trained(hipct):
    """A hipct 256x grid trainer after 60 steps, on one thread while this module's tests use
    it (the same weights every run; the thread count is restored after, as ``one_thread``
    does for a single test)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    limit = hipct.nbytes // 256 - 60
    cfg = auto_config(hipct.shape, limit)
    settings = TrainSettings(steps=400, checkpoint_every=10**6)
    trainer = GridTrainer(Normalization.of(hipct).apply(hipct), cfg, limit, settings)
    for _ in range(60):
        trainer.advance()
    yield trainer
    torch.set_num_threads(threads)


def test_level_weighted_zeroing_decodes_better_than_zeroing_the_smallest(trained):
    """The same count of zeroed latents, a tenth of the nonzero ones: the ranking by the error
    zeroing adds to the voxels decodes closer to the volume than the ranking by |y|."""
    model = trained.model
    ints = quantize_latents(model)
    k = sum(int(np.count_nonzero(q)) for q in ints) // 10
    mags = np.concatenate(
        [np.abs(y.detach().double().numpy()).ravel() for y in model.grids.latents]
    )
    flat = np.concatenate([q.ravel() for q in ints])
    nonzero = np.flatnonzero(flat)
    flat[nonzero[np.argsort(mags[nonzero], kind="stable")][:k]] = 0
    by_magnitude = np.split(flat, np.cumsum([q.size for q in ints])[:-1])
    by_magnitude = [p.reshape(q.shape) for p, q in zip(by_magnitude, ints, strict=True)]
    weights, scales = quantize_weights(model)
    old = pack_payload(model.cfg, by_magnitude, weights, scales, 1.0)
    new = pack_model(model, zero_k=k)
    assert trained.score(new) > trained.score(old)


def _recording(trained, seen: list):
    def evaluate(payload: bytes) -> float:
        seen.append((payload, trained.score(payload)))
        return seen[-1][1]

    return evaluate


@pytest.mark.parametrize("fit", [fit_checkpoint, fit_budget], ids=["checkpoint", "final"])
def test_an_over_budget_fit_scores_the_zeroing_and_a_coarser_step(trained, fit):
    """10 % over the budget: at the finest network step a checkpoint and the final fit score
    the zeroed latents (step 1, fewer nonzero latents) and then a coarser latent step that
    fills the budget within 1 %; every payload scored fits, and the best scored is kept."""
    model = trained.model
    limit = int(0.9 * len(pack_model(model)))
    seen: list[tuple[bytes, float]] = []
    result = fit(model, limit, _recording(trained, seen))
    assert all(len(p) <= limit for p, _ in seen)
    assert result.score == max(s for _, s in seen)
    nonzero = sum(int(np.count_nonzero(q)) for q in quantize_latents(model))
    first, second = (unpack_payload(p, model.cfg) for p, _ in seen[:2])
    assert first.latent_step == 1.0
    assert sum(int(np.count_nonzero(q)) for q in first.latents) < nonzero
    assert second.latent_step > 1.0 and len(seen[1][0]) >= 0.99 * limit


def test_network_steps_finer_than_int8_where_their_bits_cost_a_hundredth_of_the_payload():
    cfg = auto_config((64, 64, 64), 32768)
    weights = sum(int(np.prod(shape)) for _, shape in mlp_layout(cfg))
    # step 0.25 costs 2 bits a weight more than nominal int8, 0.5 one bit
    two_bits = math.ceil(weights * 2 / 8 / NETWORK_PRECISION_SHARE)
    assert network_steps_for(cfg, two_bits) == (0.25, 0.5, *NETWORK_STEPS)
    assert network_steps_for(cfg, two_bits - 1) == (0.5, *NETWORK_STEPS)
    one_bit = math.ceil(weights / 8 / NETWORK_PRECISION_SHARE)
    assert network_steps_for(cfg, one_bit - 1) == NETWORK_STEPS
    assert FINE_NETWORK_STEPS == (0.25, 0.5) and NETWORK_STEPS[0] == 1.0


def test_a_large_budget_trains_and_stores_the_network_finer_than_int8(hipct):
    """hipct at 16x: the controller leaves the finer network its bytes, so a checkpoint's
    plain rounding fits at step 0.25, and the stored integers are finer than int8's."""
    norm = Normalization.of(hipct)
    limit = hipct.nbytes // 16 - 60
    cfg = auto_config(hipct.shape, limit)
    trainer = GridTrainer(norm.apply(hipct), cfg, limit, TrainSettings(steps=40))
    assert trainer.network_steps[0] == 0.25
    assert trainer.target_bits() < 8 * (limit - len(pack_model(trainer.model)))
    for _ in range(40):
        trainer.advance()
    result = trainer.checkpoint()
    assert result.network_step == 0.25 and result.zeroed == 0 and len(result.payload) <= limit
    stored = unpack_payload(result.payload, cfg)
    assert max(int(np.abs(w).max()) for w in stored.weights) > 127
    floats = trainer.model.synth.stored()
    values = stored.weight_values()
    for (name, value), scale in zip(values.items(), stored.scales, strict=True):
        w = floats[name].detach().numpy()
        assert np.abs(value - w).max() <= 0.5 * scale * (1 + 1e-6)  # within half a step
        nominal = float(np.abs(w).max()) / 127  # int8's step; 0.25 of it unless it is
        assert scale <= 0.2505 * nominal or scale == np.finfo(np.float16).tiny  # float16's floor
