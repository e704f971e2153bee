"""Tiled stores of either model family end to end on a Dask cluster (issue 24, issue 22's
"tiles of a store"): a 48x40x36 crop of a real volume in 2x2x2 tiles, a few steps a tile."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import cloudpickle
import numpy as np
import pytest
import tifffile
import zarr

from napari_moec import compress_tiled, open_tiled
from napari_moec.config import ArchConfig, TrainConfig
from napari_moec.errors import MoecFormatError
from napari_moec.tiled.events import TiledStarted, TileFinished
from napari_moec.tiled.runner import TiledCompressor
from napari_moec.tiled.store import existing_chunks

from .conftest import SHARED_DATA

distributed = pytest.importorskip("distributed")
cloudpickle.register_pickle_by_value(sys.modules[__name__])

TRAIN = TrainConfig(steps=30, batch_size=1024, report_every=10)
RATIO = 16


def settings(model: str) -> dict:
    return {"ratio": RATIO, "tile": (24, 20, 18), "margin": 2, "train": TRAIN,
            "arch": ArchConfig(model=model)}  # fmt: skip


@pytest.fixture(scope="module")
def volume():
    path = SHARED_DATA / "hipct_brain_sci_64.tif"
    if not path.exists():
        pytest.skip(f"shared data not found: {path}")
    return tifffile.imread(path)[:48, :40, :36].copy()


def _run(job: TiledCompressor, stop_after: int | None = None):
    events, run = [], job.run()
    while True:
        try:
            event = next(run)
        except StopIteration as done:
            return events, done.value
        events.append(event)
        if (
            stop_after is not None
            and sum(isinstance(e, TileFinished) for e in events) == stop_after
        ):
            job.stop()


@pytest.mark.parametrize("model", ["grid", "siren"])
def test_store_round_trips_within_its_budget(client, volume, tmp_path, model):
    dest = tmp_path / f"{model}.ome.zarr"
    report = compress_tiled(volume, dest, client=client, progress=False, **settings(model))
    assert report.network_tiles == 8 and not report.stopped
    on_disk = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
    assert volume.nbytes / on_disk >= RATIO and on_disk == report.store_bytes
    meta = (dest / "0" / "zarr.json").read_text()
    assert ('"family":"grid"' in meta.replace(" ", "")) == (model == "grid")
    decoded = zarr.open_array(dest / "0", mode="r")[:]
    store = open_tiled(dest)
    assert np.array_equal(store.decode(), decoded)
    span = float(volume.max() - volume.min())
    true_psnr = 10 * np.log10(1 / np.mean(((decoded.astype(float) - volume) / span) ** 2))
    assert true_psnr > 18 and abs(true_psnr - report.psnr) < 0.5  # the estimate (task.py)
    assert np.isfinite(report.seam_penalty)
    part = store.decode(roi="5:40,3:33,10:36", stride=(2, 3, 1))
    assert np.abs(part.astype(int) - decoded[5:40:2, 3:33:3, 10:36]).max() <= 1
    labels = store.expert_labels()
    assert labels.shape == volume.shape and labels.min() >= 1  # every tile is a network
    experts = store.spec.networks.experts
    for index in store.spec.grid.indices():
        ids = labels[store.spec.grid.tile_slices(index)].astype(np.int64)
        assert ((ids - 1) // experts == store.spec.grid.flat(index)).all()
    info = store.info()
    assert info["network_tiles"] == 8 and info["ratio"] >= RATIO
    chunk = dest / "0" / "c" / "1" / "0" / "1"
    damaged = bytearray(chunk.read_bytes())
    damaged[len(damaged) // 2] ^= 0x40
    chunk.write_bytes(bytes(damaged))
    with pytest.raises(MoecFormatError, match="0/c/1/0/1"):
        zarr.open_array(dest / "0", mode="r")[24:30, 0:5, 18:20]


@pytest.mark.parametrize("model", ["grid", "siren"])
def test_stop_then_resume(client, volume, tmp_path, model):
    dest = tmp_path / f"{model}.ome.zarr"
    events, report = _run(TiledCompressor(volume, dest, client=client, **settings(model)), 2)
    assert report.stopped
    partial = dest.with_name(dest.name + ".partial")
    root = partial if partial.exists() else dest  # where the unfinished run's chunks are
    kept = {i: p.read_bytes() for i, p in existing_chunks(root)}
    assert 2 <= len(kept) < 8
    events, report = _run(TiledCompressor(volume, dest, client=client, **settings(model)))
    started = next(e for e in events if isinstance(e, TiledStarted))
    assert started.resumed == len(kept) and started.todo == 8 - len(kept)
    assert not report.stopped and volume.nbytes / report.store_bytes >= RATIO
    for index, data in kept.items():
        assert (dest / "0" / "c").joinpath(*map(str, index)).read_bytes() == data


def test_the_widget_keeps_the_model_it_was_given():
    pytest.importorskip("napari")
    from napari_moec._napari.widget_tiled import engine_kwargs

    arch = ArchConfig(model="grid", num_experts=4, top_k=2)
    request = SimpleNamespace(
        ratio=32,
        arch=arch,
        configs={"arch": arch, "bound": SimpleNamespace(active=False)},
        tiled=SimpleNamespace(engine_kwargs={}),
    )  # the fields engine_kwargs reads
    assert engine_kwargs(request)["arch"] == ArchConfig(model="grid", num_experts=4, top_k=2)


def test_tiles_train_in_proportion_to_their_voxels(client, volume, tmp_path):
    """Uneven tiles (32 + 16, 24 + 16, 24 + 12 voxels an axis) train for the job's steps times
    their region's voxels over the mean region's (``TilePlan.schedule``): the store's steps
    are the job's times its tiles, and a larger tile trains longer."""
    from napari_moec.tiled.allocate import schedule_shares
    from napari_moec.tiled.task import tile_schedule

    dest = tmp_path / "uneven.ome.zarr"
    job = TiledCompressor(volume, dest, client=client,
                          **{**settings("grid"), "tile": (32, 24, 24)})  # fmt: skip
    _, report = _run(job)
    assert report.network_tiles == 8 and not report.stopped
    spec = open_tiled(dest).spec
    shares = schedule_shares(spec, list(job.results))
    regions = {i: np.prod(spec.region_shape(i)) for i in job.results}
    assert len(set(regions.values())) > 2 and sum(shares.values()) == pytest.approx(8)
    for index, result in job.results.items():
        expected = round(TRAIN.steps * regions[index] / np.mean(list(regions.values())))
        assert result.steps == expected == tile_schedule(TRAIN, shares[index]).steps
    biggest, smallest = max(regions, key=regions.get), min(regions, key=regions.get)
    assert job.results[biggest].steps > TRAIN.steps > job.results[smallest].steps
    timed = tile_schedule(TrainConfig(steps=10, time_limit=60.0), 0.5)
    assert (timed.steps, timed.time_limit) == (5, 30.0)
    assert tile_schedule(TRAIN, 1.0) is TRAIN
