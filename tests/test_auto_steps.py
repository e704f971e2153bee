""" "auto" steps: a run that names no step count trains what its model family needs for the
model it sized (``ModelFamily.auto_steps``), one step count given stays given, and a store's
tiles keep their own default (``tiled.task.STORE_AUTO_STEPS``)."""

import math
import subprocess
import sys
from dataclasses import replace

import pytest

from napari_moec import families
from napari_moec.config import AUTO_STEPS_HELP, TrainConfig
from napari_moec.families.grid.sizing import (
    AUTO_MAX_STEPS,
    AUTO_MIN_STEPS,
    AUTO_PASSES,
    AUTO_STEP_LATENTS,
    AUTO_WORK_STEPS,
    auto_config,
    auto_steps,
)
from napari_moec.families.grid.train import CPU_MAX_VOXELS
from napari_moec.schedule import DEFAULT_STEPS
from napari_moec.tiled import TiledCompressor
from napari_moec.tiled.task import STORE_AUTO_STEPS, tile_schedule
from napari_moec.training import Compressor

from .conftest import smooth_volume

MACAQUE = (128, 206, 168)  # the shared macaque T1's shape: more voxels than the floor covers


def test_steps_are_left_to_the_family_by_default():
    assert TrainConfig().steps is None


@pytest.mark.parametrize(
    ("shape", "expected"),
    [
        ((16, 16, 16), AUTO_MIN_STEPS),
        ((64, 64, 64), AUTO_MIN_STEPS),
        ((3, 25, 41, 33), AUTO_MIN_STEPS),
        (MACAQUE, 1000 * math.ceil(AUTO_PASSES * math.prod(MACAQUE) / CPU_MAX_VOXELS / 1000)),
        ((512, 512, 512), AUTO_MAX_STEPS),
    ],
)
def test_grid_auto_steps_follow_the_volume_between_floor_and_cap(shape, expected):
    assert auto_steps(auto_config(shape, 10_000)) == expected


def test_grid_auto_steps_shrink_where_the_latents_make_a_step_costly():
    """The macaque at 16x: latents on its voxel lattice (5.1 M; a step ~5x one at 256x) train
    the work cap's steps, not the 150 passes the same volume gets at 256x."""
    heavy = auto_config(MACAQUE, math.prod(MACAQUE) * 4 // 16)
    light = auto_config(MACAQUE, math.prod(MACAQUE) * 4 // 256)
    assert heavy.latent_count > 10 * AUTO_STEP_LATENTS > light.latent_count
    cap = AUTO_WORK_STEPS / (1 + heavy.latent_count / AUTO_STEP_LATENTS)
    assert auto_steps(heavy) == 1000 * math.floor(cap / 1000) < AUTO_MIN_STEPS
    assert auto_steps(light) > AUTO_MIN_STEPS  # the passes: its cap is not reached
    by_budget = [auto_steps(auto_config(MACAQUE, b)) for b in (3_000, 70_000, 280_000, 1_100_000)]
    assert by_budget == sorted(by_budget, reverse=True)


def test_grid_auto_steps_grow_with_the_voxels_and_pass_the_floor_on_large_volumes():
    edges = [32, 64, 128, 160, 192, 224, 256, 320]
    steps = [auto_steps(auto_config((n, n, n), 10_000)) for n in edges]
    assert steps == sorted(steps)
    assert steps[0] == AUTO_MIN_STEPS < steps[4] < AUTO_MAX_STEPS == steps[-1]
    assert all(s % 1000 == 0 for s in steps)


@pytest.mark.parametrize(
    ("model", "expected"), [("grid", AUTO_MIN_STEPS), ("siren", DEFAULT_STEPS)]
)
def test_a_run_without_steps_trains_its_familys_auto_steps(model, expected):
    volume = smooth_volume((24, 24, 24))
    comp = Compressor(volume, 16, family=model)
    family = families.get(model)
    assert comp.train_config.steps == family.auto_steps(comp.plan.model) == expected
    assert comp.train_config == replace(TrainConfig(), steps=expected)


def test_a_time_limit_still_ends_an_auto_run_and_given_steps_stay_given():
    volume = smooth_volume((24, 24, 24))
    limited = Compressor(volume, 16, train=TrainConfig(time_limit=30.0), family="grid")
    assert (limited.train_config.steps, limited.train_config.time_limit) == (AUTO_MIN_STEPS, 30.0)
    given = Compressor(volume, 16, train=TrainConfig(steps=7), family="grid")
    assert given.train_config.steps == 7


def test_an_auto_run_trains_the_resolved_steps_to_the_end():
    """The resolved count is what the loop runs and reports (a short floor, patched in)."""
    volume = smooth_volume((16, 16, 16))
    comp = Compressor(volume, 16, family="grid", train=TrainConfig(seed=1))
    assert comp.train_config.steps == AUTO_MIN_STEPS
    comp.train_config = replace(comp.train_config, steps=12)  # the floor, cut for a test
    result = comp.fit()
    assert result.report.steps == 12 and not result.report.stopped_early


def test_a_store_without_steps_trains_its_tiles_the_store_default(tmp_path):
    volume = smooth_volume((32, 32, 32))
    job = TiledCompressor(volume, tmp_path / "s.ome.zarr", 16, tile=16, workers=1)
    assert job.train == replace(TrainConfig(), steps=STORE_AUTO_STEPS)
    assert tile_schedule(job.train, 0.5).steps == STORE_AUTO_STEPS // 2
    given = TiledCompressor(volume, tmp_path / "t.ome.zarr", 16, tile=16, workers=1,
                            train=TrainConfig(steps=30))  # fmt: skip
    assert given.train.steps == 30


def test_the_auto_help_states_the_constants_it_describes():
    """``config.AUTO_STEPS_HELP`` is written out (the config layer imports no family): it
    must name the numbers the families and the store use."""
    for number in (
        f"grid: {AUTO_MIN_STEPS:,}",
        f"{AUTO_PASSES} passes",
        f"at most {AUTO_MAX_STEPS:,}",
        f"siren: {DEFAULT_STEPS}",
        f"a tiled store: {STORE_AUTO_STEPS} times",
    ):
        assert number in AUTO_STEPS_HELP


def test_the_cli_help_says_what_auto_steps_are():
    out = subprocess.run(
        [sys.executable, "-m", "napari_moec.cli", "compress", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    flat = " ".join(out.split())
    assert "--steps N optimiser steps, in [1, 1000000000] (default: auto: grid: 20,000" in flat
    assert "fewer where the latent grids make a step costly; siren: 2000" in flat
