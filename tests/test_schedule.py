"""Learning-rate schedules and the loss guard (napari_moec.schedule)."""

import itertools
import math

import numpy as np
import pytest
import torch

import napari_moec as nm
from napari_moec.config import ModelConfig, TrainConfig
from napari_moec.schedule import (
    COSINE_MIN_STEPS,
    COSINE_MIN_WIDTH,
    LossGuard,
    Schedule,
    resolve_schedule,
)


def test_cosine_warms_up_then_decays_to_its_floor():
    s = Schedule("cosine", peak=5e-3, final=0.01, warmup=0.02)
    ramp = [s.lr(p) for p in np.linspace(0, 0.02, 11)[:-1]]
    assert ramp == sorted(ramp) and ramp[0] < 0.05 * 5e-3
    decay = [s.lr(p) for p in np.linspace(0.02, 1.0, 101)]
    assert decay[0] == pytest.approx(5e-3)
    assert all(a >= b for a, b in itertools.pairwise(decay))
    assert decay[-1] == pytest.approx(5e-5)
    assert s.lr(0.51) == pytest.approx(0.5 * (5e-3 + 5e-5), rel=0.02)  # half way: the mean


def test_exponential_without_warmup_is_the_earlier_schedule():
    s = resolve_schedule(TrainConfig(schedule="exponential"), ModelConfig(hidden_features=40))
    assert (s.kind, s.peak, s.final, s.warmup) == ("exponential", 2e-3, 0.05, 0.0)
    for p in (0.0, 0.3, 0.77, 1.0):
        assert s.lr(p) == 2e-3 * 0.05**p


def test_auto_picks_cosine_for_wide_networks_only():
    auto = TrainConfig()
    wide = resolve_schedule(auto, ModelConfig(hidden_features=COSINE_MIN_WIDTH))
    narrow = resolve_schedule(auto, ModelConfig(hidden_features=COSINE_MIN_WIDTH - 1))
    assert (wide.kind, wide.peak) == ("cosine", 5e-3)
    assert (narrow.kind, narrow.peak) == ("exponential", 2e-3)
    mine = resolve_schedule(TrainConfig(lr=1e-3, lr_final=0.5), ModelConfig(hidden_features=64))
    assert (mine.peak, mine.final) == (1e-3, 0.5)


def test_auto_keeps_the_exponential_schedule_for_short_runs():
    """The cosine peak costs the first few hundred steps: a short run (a tile of a store) at
    5e-3 stored 15.5 dB where the exponential schedule stored 28.4 dB."""
    wide = ModelConfig(hidden_features=72)
    short = resolve_schedule(TrainConfig(steps=COSINE_MIN_STEPS - 1), wide)
    long = resolve_schedule(TrainConfig(steps=COSINE_MIN_STEPS), wide)
    assert (short.kind, short.peak, short.warmup) == ("exponential", 2e-3, 0.0)
    assert long.kind == "cosine"
    forced = resolve_schedule(TrainConfig(steps=100, schedule="cosine"), wide)
    assert forced.kind == "cosine"


def _tiny():
    model = torch.nn.Linear(3, 2)
    return model, torch.optim.Adam(model.parameters(), lr=1e-3)


def test_guard_rolls_back_a_jump_and_halves_the_lr():
    model, opt = _tiny()
    guard = LossGuard(model, opt, snapshot_every=50, warm_steps=0)
    for step in range(10, 110, 10):
        assert not guard.observe(step, 1.0)
    healthy = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.weight.add_(100.0)  # training "breaks" the weights...
    assert guard.observe(110, 50.0)  # ...and the loss jumps: roll back
    assert guard.lr_scale == 0.5 and guard.rollbacks == [110]
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, healthy[name], rtol=0, atol=0)
    assert not guard.observe(120, 1.0)  # back to normal: no more rollbacks


def test_guard_catches_a_non_finite_loss_once_it_has_a_snapshot():
    model, opt = _tiny()
    guard = LossGuard(model, opt, snapshot_every=10, warm_steps=0)
    guard.observe(10, 0.5)
    assert guard.observe(20, math.nan)


def test_runs_with_the_guard_and_cosine_schedule_are_reproducible(volume16):
    train = TrainConfig(steps=120, batch_size=1024, schedule="cosine", report_every=5)
    a = nm.compress(volume16, 8, train=train)
    b = nm.compress(volume16, 8, train=train)
    np.testing.assert_array_equal(a.decode(), b.decode())


def _fitted_and_fresh(volume16):
    """A model trained a little on ``volume16`` (weights "good") and its initial weights."""
    comp = nm.Compressor(volume16, 16, train=nm.TrainConfig(steps=60, batch_size=1024))
    run = comp.train()
    fresh = None
    for _event in run:
        if fresh is None and comp.model is not None:
            fresh = {k: v.clone() for k, v in comp.model.state_dict().items()}
    from napari_moec.sampling import flat_index_coords

    target = torch.from_numpy(comp.normalization.apply(volume16).reshape(-1))
    index = torch.arange(target.numel())
    return comp, fresh, flat_index_coords(index, volume16.shape), target


def test_keep_better_keeps_the_last_weights_when_they_fit_better(volume16):
    from napari_moec.schedule import keep_better

    comp, fresh, coords, target = _fitted_and_fresh(volume16)
    model = comp.model
    trained = {k: v.clone() for k, v in model.state_dict().items()}
    assert keep_better(model, fresh, coords, target) == "last"
    for k, v in model.state_dict().items():
        assert torch.equal(v, trained[k])
    assert keep_better(model, None, coords, target) == "last"


def test_keep_better_restores_the_snapshot_when_it_fits_better(volume16):
    from napari_moec.schedule import keep_better

    comp, fresh, coords, target = _fitted_and_fresh(volume16)
    model = comp.model
    trained = {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(fresh)  # the "last" weights are now the untrained ones
    assert keep_better(model, trained, coords, target) == "best"
    for k, v in model.state_dict().items():
        assert torch.equal(v, trained[k])


def test_a_run_records_which_weights_it_kept(volume16):
    comp = nm.Compressor(volume16, 16, train=nm.TrainConfig(steps=40, batch_size=1024))
    for _ in comp.run():
        pass
    assert comp.final_choice in ("last", "best")


def test_the_loss_guard_watches_siren_training_and_not_the_grid_family(volume16, monkeypatch):
    """ModelFamily.loss_guard: a grid run's MSE rises by design when its rate controller
    tightens the rate (a store tile at its budget was rolled back and lr-halved to 32.7 dB
    instead of 40.2), so the loop's guard watches SIREN training only; and a grid run decodes
    the same with the option on or off."""
    import napari_moec.training as training

    watched = []

    class Recording(LossGuard):
        def observe(self, step, loss):
            watched.append(step)
            return super().observe(step, loss)

    monkeypatch.setattr(training, "LossGuard", Recording)
    grid = [
        nm.compress(volume16, 8, arch=nm.ArchConfig(model="grid"),
                    train=TrainConfig(steps=40, report_every=5, guard=guard)).decode()
        for guard in (True, False)
    ]  # fmt: skip
    assert watched == []
    np.testing.assert_array_equal(grid[0], grid[1])
    nm.compress(volume16, 8, arch=nm.ArchConfig(model="siren"),
                train=TrainConfig(steps=40, batch_size=1024, report_every=5))  # fmt: skip
    assert watched == list(range(5, 41, 5))
