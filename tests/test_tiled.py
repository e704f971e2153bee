"""Tiled compression on a real Dask LocalCluster of 2 worker processes: round trip through plain
zarr in a fresh process, the ratio promise, constant and empty tiles, a killed worker, resume
after a stop, region reads, bad inputs. CI-sized: 16^3 tiles, a few dozen training steps."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import zipfile
from dataclasses import replace
from pathlib import Path

import cloudpickle
import numpy as np
import pytest
import tifffile
import zarr

from napari_moec import compress_tiled, open_tiled
from napari_moec.config import ArchConfig, RunConfig, TrainConfig
from napari_moec.errors import ConfigError
from napari_moec.generators import drain
from napari_moec.tiled.cluster import WORKER_MALLOC, connect, default_shape
from napari_moec.tiled.events import TiledStarted, TileFinished
from napari_moec.tiled.placement import core_block
from napari_moec.tiled.runner import TiledCompressor
from napari_moec.tiled.store import RUN_STATE, existing_chunks
from napari_moec.tiled.tiledecode import DECODE_COUNTS

from .conftest import SHARED_DATA, smooth_volume

distributed = pytest.importorskip("distributed")
cloudpickle.register_pickle_by_value(sys.modules[__name__])  # hooks run on the workers

TRAIN = TrainConfig(steps=25, batch_size=1024, report_every=5)
#: The engine's behaviour on tiles of 16³ at 16x (~500 B a tile): SIREN tiles, which fit there
#: (grid tiles are tested in test_tiled_family*.py at sizes that fit them).
SIREN = ArchConfig(model="siren")
SETTINGS = {"ratio": 16, "tile": 16, "margin": 2, "train": TRAIN, "arch": SIREN}


@pytest.fixture(scope="module")
def volume():
    """48 x 40 x 40 uint16 of real HiP-CT voxels with a constant tile and a background corner."""
    path = SHARED_DATA / "hipct_brain_sci_64.tif"
    if not path.exists():
        pytest.skip(f"shared data not found: {path}")
    v = tifffile.imread(path)[:48, :40, :40].copy()
    v[16:32, 16:32, 16:32] = 20000  # one constant tile
    v[32:, 32:, 32:] = 0  # the edge tile (2, 2, 2): background, not written at all
    return v


def run_events(job: TiledCompressor, stop_after: int | None = None):
    events, run = [], job.run()
    while True:
        try:
            event = next(run)
        except StopIteration as done:
            return events, done.value
        events.append(event)
        finished = sum(isinstance(e, TileFinished) for e in events)
        if stop_after is not None and finished == stop_after:
            job.stop()


def test_round_trip_through_plain_zarr_in_a_fresh_process(client, volume, tmp_path):
    source = tmp_path / "v.npy"
    np.save(source, volume)
    dest = tmp_path / "v.ome.zarr"
    report = compress_tiled(source, dest, client=client, progress=False, **SETTINGS)
    assert report.total_tiles == 27 and not report.stopped
    assert report.network_tiles == 25 and report.constant_tiles == 1 and report.empty_tiles == 1
    code = (
        "import sys, numpy as np, zarr\n"
        "np.save(sys.argv[2], zarr.open_array(sys.argv[1] + '/0', mode='r')[:])\n"
        "print(sorted(sys.modules.keys() & {'distributed', 'napari_moec.tiled.codec'}))\n"
        "import dask.array as da\n"
        "np.save(sys.argv[3], da.from_zarr(sys.argv[1] + '/0')[::2, 5:30, :].compute())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(dest), str(tmp_path / "a.npy"), str(tmp_path / "b.npy")],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "napari_moec.tiled.codec" in out.stdout and "distributed" not in out.stdout
    decoded = np.load(tmp_path / "a.npy")
    assert np.array_equal(np.load(tmp_path / "b.npy"), decoded[::2, 5:30, :])
    assert np.array_equal(open_tiled(dest).decode(), decoded)
    span = float(volume.max() - volume.min())
    mse = np.mean(((decoded.astype(float) - volume) / span) ** 2)
    # the report estimates each tile's error on a fixed sample of its region (grid: a regular
    # sub-grid; issue 24: no decode of whole tiles), close to what readers see
    assert abs(10 * np.log10(1 / mse) - report.psnr) < 0.3
    assert report.psnr > 20
    assert np.isfinite(report.seam_penalty)
    meta = json.loads((dest / "zarr.json").read_text())["attributes"]
    assert meta["ome"]["version"] == "0.5"
    assert meta["ome"]["multiscales"][0]["datasets"][0]["path"] == "0"


def test_ratio_promise_counts_every_byte(client, volume, tmp_path):
    for ratio in (16, 48):
        dest = tmp_path / f"r{ratio}.ome.zarr"
        report = compress_tiled(volume, dest, client=client, progress=False,
                                **{**SETTINGS, "ratio": ratio})  # fmt: skip
        on_disk = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
        assert volume.nbytes / on_disk >= ratio
        assert on_disk == report.store_bytes
        info = open_tiled(dest).info()
        assert info["store_bytes"] == on_disk and info["ratio"] >= ratio
        assert info["target_ratio"] == ratio and info["psnr"] == round(report.psnr, 2)
        assert info["network_tiles"] == 25 and info["empty_tiles"] == 1
        assert not (dest / RUN_STATE).exists()


def test_constant_and_empty_tiles_are_nearly_free_and_exact(client, volume, tmp_path):
    dest = tmp_path / "c.ome.zarr"
    compress_tiled(volume, dest, client=client, progress=False, **SETTINGS)
    chunks = dict(existing_chunks(dest))
    assert (2, 2, 2) not in chunks  # every voxel is the fill value: no chunk
    assert chunks[(1, 1, 1)].stat().st_size == 1 + 3 + 2 + 4  # kind, index, value, CRC
    decoded = open_tiled(dest).decode()
    assert (decoded[16:32, 16:32, 16:32] == 20000).all()
    assert (decoded[32:, 32:, 32:] == 0).all()
    assert zarr.open_array(dest / "0", mode="r").fill_value == 0


class KillOnce:
    """A tile hook that kills its worker process the first time it runs (marker file)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __call__(self, job) -> None:
        if job.plan.index == (1, 0, 1) and not self.marker.exists():
            self.marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)


def test_a_killed_worker_loses_nothing(client, volume, tmp_path):
    source = tmp_path / "v.tif"
    tifffile.imwrite(source, volume)
    dest = tmp_path / "k.ome.zarr"
    marker = tmp_path / "killed"
    report = compress_tiled(source, dest, client=client, progress=False,
                            hook=KillOnce(marker), **SETTINGS)  # fmt: skip
    assert marker.exists() and not report.stopped
    assert len(dict(existing_chunks(dest))) == 26
    assert open_tiled(dest).decode().shape == volume.shape
    client.wait_for_workers(2)


def test_stop_then_resume_keeps_finished_tiles(client, volume, tmp_path):
    dest = tmp_path / "s.ozx"
    job = TiledCompressor(volume, dest, client=client, **SETTINGS)
    events, report = run_events(job, stop_after=4)
    assert report.stopped and not dest.exists()
    partial = dest.with_name(dest.name + ".partial")
    assert (partial / RUN_STATE).exists()
    kept = {i: (p.read_bytes(), p.stat().st_mtime_ns) for i, p in existing_chunks(partial)}
    assert len(kept) >= 5  # 4 network tiles + the constant tile, maybe more in flight
    with pytest.raises(ConfigError, match="unfinished run of other data or settings"):
        TiledCompressor(volume, dest, client=client, **{**SETTINGS, "ratio": 20}).fit()
    events, report = run_events(TiledCompressor(volume, dest, client=client, **SETTINGS))
    started = next(e for e in events if isinstance(e, TiledStarted))
    assert started.resumed == len(kept) and started.todo == 26 - len(kept)
    assert sum(isinstance(e, TileFinished) for e in events) == started.todo
    assert not report.stopped and dest.is_file() and not partial.exists()
    assert volume.nbytes / dest.stat().st_size >= 16  # the .ozx file, every byte
    with zipfile.ZipFile(dest) as zf:
        names = zf.namelist()
        assert names[:2] == ["zarr.json", "0/zarr.json"]  # RFC-9: metadata first, root first
        for index, (data, _) in kept.items():
            assert zf.read("0/c/" + "/".join(map(str, index))) == data  # kept byte for byte
    with zarr.storage.ZipStore(dest, mode="r") as store:
        decoded = zarr.open_array(store, path="0", mode="r")[:]
    assert np.array_equal(decoded, open_tiled(dest).decode())
    assert np.isfinite(report.psnr) and report.resumed == len(kept)


def test_region_reads_decode_only_touched_tiles(client, volume, tmp_path):
    dest = tmp_path / "roi.ome.zarr"
    compress_tiled(volume, dest, client=client, progress=False, **SETTINGS)
    store = open_tiled(dest)
    DECODE_COUNTS.clear()
    part = store.decode(roi="0:10,18:30,0:40", stride=2)  # tiles (0, 1, 0..2)
    assert part.shape == (5, 6, 20) and sum(DECODE_COUNTS.values()) == 3
    DECODE_COUNTS.clear()
    zarr.open_array(dest / "0", mode="r")[17:20, 0:5, 0:5]
    assert sum(DECODE_COUNTS.values()) == 1
    labels = store.to_dask(stride=4, labels=True).compute()  # on the cluster
    assert labels.shape == (12, 10, 10) and labels.dtype == np.uint32
    levels = store.pyramid(levels=3)
    assert [lv.shape for lv in levels] == [(48, 40, 40), (24, 20, 20), (12, 10, 10)]


def test_dask_array_source(client, volume, tmp_path):
    import dask.array as da

    dest = tmp_path / "d.ome.zarr"
    report = compress_tiled(da.from_array(volume, chunks=20), dest, client=client, progress=False,
                            **SETTINGS)  # fmt: skip
    assert report.total_tiles == 27 and report.ratio >= 16


def test_bad_inputs_fail_before_any_work(client, volume, tmp_path):
    dest = tmp_path / "bad.ome.zarr"
    cases = [
        (tmp_path / "missing.tif", "input not found"),
        (np.zeros((40, 40), np.uint16), "expected a 3D"),
        (np.zeros((2, 2, 3, 40, 40), np.uint16), "expected a 3D"),
        (np.zeros((20, 20, 20), np.int64), "unsupported dtype int64"),
        (tmp_path / "v.json", "input not found"),
    ]
    for source, message in cases:
        with pytest.raises(ConfigError, match=message):
            compress_tiled(source, dest, client=client, progress=False, **SETTINGS)
    nan = volume.astype(np.float32)
    nan[20, 3, 30] = np.nan
    with pytest.raises(ConfigError, match=r"NaN or infinite values \(tile \(1, 0, 1\)"):
        compress_tiled(nan, dest, client=client, progress=False, **SETTINGS)
    assert not dest.exists()  # nothing was written
    with pytest.raises(ConfigError, match="hidden_features is sized per tile"):
        arch = ArchConfig(model="siren", hidden_features=8)
        TiledCompressor(volume, dest, **{**SETTINGS, "arch": arch})
    with pytest.raises(ConfigError, match="ratio must be"):
        TiledCompressor(volume, dest, **{**SETTINGS, "ratio": 0.5})
    for exponent in (-0.1, 4.5, float("nan")):
        with pytest.raises(ConfigError, match=r"exponent must be within \[0, 4\]"):
            TiledCompressor(volume, dest, **{**SETTINGS, "exponent": exponent})
    for niceness in (-1, 20, True, 2.5):
        with pytest.raises(ConfigError, match=r"niceness must be an integer in \[0, 19\]"):
            TiledCompressor(volume, dest, niceness=niceness, **SETTINGS)
    dest.mkdir()
    (dest / "keep.txt").write_text("not a store")
    with pytest.raises(ConfigError, match="exists; pass overwrite=True"):
        TiledCompressor(volume, dest, **SETTINGS)


def _thread_niceness() -> list[int]:
    """The niceness of every thread of this process (Linux nices threads one by one)."""
    tids = [int(t) for t in os.listdir("/proc/self/task")]
    return [os.getpriority(os.PRIO_PROCESS, tid) for tid in tids]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread niceness: Linux")
def test_a_cluster_started_for_napari_trains_at_lower_priority():
    """``niceness`` lowers every thread of each started worker (the threads that train a tile
    are started later and inherit it); the default leaves the workers as this process is."""
    base = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    for niceness in (0, 7):
        shape = default_shape("cpu", workers=1, niceness=niceness)
        client, owned = connect(shape=shape)
        try:
            assert owned
            seen = client.run(_thread_niceness)  # on the worker's event loop thread
            (nice,) = seen.values()
            in_task = client.submit(_thread_niceness, pure=False).result()  # a task's thread
            assert set(nice) | set(in_task) == {min(19, base + niceness)}, (seen, in_task)
        finally:
            cluster = client.cluster
            client.close()
            cluster.close()


def _malloc_environ() -> dict[str, str | None]:
    keys = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "OMP_NUM_THREADS")
    return {k: os.environ.get(k) for k in keys}


def test_local_workers_start_with_an_allocator_that_reuses_step_tensors(monkeypatch):
    """Workers started for a run get glibc thresholds that keep a training step's tensors on
    the heap (``WORKER_MALLOC``; Dask's own ``MALLOC_TRIM_THRESHOLD_=65536`` made every
    tensor over 128 kB an mmap: a grid tile trained 2.9x slower), and keep the rest of Dask's
    worker environment (one OpenMP thread), also when an earlier cluster left Dask's value in
    this process's environment (its nanny writes it there); that environment is left as it
    was."""
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "65536")
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    client, _ = connect(shape=default_shape("cpu", workers=1))
    try:
        seen = client.submit(_malloc_environ, pure=False).result()
    finally:
        cluster = client.cluster
        client.close()
        cluster.close()
    assert seen == {
        "MALLOC_MMAP_THRESHOLD_": str(WORKER_MALLOC["MALLOC_MMAP_THRESHOLD_"]),
        "MALLOC_TRIM_THRESHOLD_": str(WORKER_MALLOC["MALLOC_TRIM_THRESHOLD_"]),
        "OMP_NUM_THREADS": "1",
    }
    assert WORKER_MALLOC["MALLOC_MMAP_THRESHOLD_"] >= 1 << 20
    assert os.environ["MALLOC_TRIM_THRESHOLD_"] == "65536"
    assert "MALLOC_MMAP_THRESHOLD_" not in os.environ


def _affinity() -> list[set[int]]:
    """The cores every thread of this process may run on."""
    return [os.sched_getaffinity(int(t)) for t in os.listdir("/proc/self/task")]


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="CPU affinity: Linux")
def test_pinned_workers_each_run_on_cores_of_their_own():
    """``pin``: every thread of worker i (and a task's thread, started later) may run on the
    i-th block of allowed cores only, as many as the worker's torch threads (one worker on a
    2-core machine gets both: its 2 threads pinned to one core trained 77 steps in 300 s);
    unpinned workers keep this process's cores; more pinned workers than cores is refused."""
    cores = sorted(os.sched_getaffinity(0))
    for workers, pin in [(min(2, len(cores)), False), (min(2, len(cores)), True), (1, True)]:
        shape = default_shape("cpu", workers=workers, pin=pin)
        client, _ = connect(shape=shape)
        try:
            seen = client.run(_affinity)
            in_tasks = [client.submit(_affinity, pure=False, workers=[w]).result()
                        for w in sorted(seen)]  # fmt: skip
            allowed = []  # one set of cores per worker, the same for all its threads
            for threads, in_task in zip(seen.values(), in_tasks, strict=True):
                (worker_cores,) = {frozenset(a) for a in threads + in_task}
                allowed.append(worker_cores)
            if pin:
                assert all(len(a) == shape.torch_threads for a in allowed)
                pinned = sorted(c for a in allowed for c in a)
                assert pinned == cores[: workers * shape.torch_threads]
            else:
                assert allowed == [frozenset(cores)] * workers
        finally:
            cluster = client.cluster
            client.close()
            cluster.close()
    with pytest.raises(ConfigError, match="one core per worker"):
        default_shape("cpu", workers=len(cores) + 1, pin=True)


def test_pinned_cores_come_in_blocks_of_a_workers_threads():
    """Worker i's cores are the i-th block of its thread count, wrapping when there are more
    workers than blocks (a restarted worker keeps its name)."""
    cores = [0, 1, 2, 3, 5, 7]
    assert core_block(cores, 0, 1) == [0]
    assert core_block(cores, 4, 1) == [5]
    assert core_block(cores, 1, 2) == [2, 3]
    assert core_block(cores, 2, 2) == [5, 7]
    assert core_block(cores, 3, 2) == [0, 1]
    assert core_block(cores, 1, 4) == [0, 1, 2, 3]  # one whole block of 4 in 6 cores
    assert core_block(cores, 0, 9) == cores  # never more than there are


def test_pinning_refuses_more_threads_than_a_worker_has_cores(volume, tmp_path):
    """More torch threads a tile than a pinned worker's cores is refused before anything
    starts: threads pinned to fewer cores wait for each other at every barrier."""
    cores = len(os.sched_getaffinity(0))
    with pytest.raises(ConfigError, match="need 2 cores a worker"):
        TiledCompressor(volume, tmp_path / "p.ome.zarr", workers=cores, pin=True,
                        run=RunConfig(threads=2))  # fmt: skip
    assert not (tmp_path / "p.ome.zarr").exists()


def test_report_splits_tile_time_and_memory(client, volume, tmp_path):
    """Each network tile reports its task's wall time (training is a part of it) and its
    worker's anonymous and file-backed memory; the report sums them into the per-tile
    overhead share (issue 24)."""
    job = TiledCompressor(volume[:32, :32, :16], tmp_path / "m.ome.zarr", client=client,
                          **{**SETTINGS, "tile": (16, 16, 16)})  # fmt: skip
    _, report = run_events(job)
    net = [r for r in job.results.values() if r.kind == "network"]
    assert len(net) == 4
    for r in net:
        assert r.wall_seconds >= r.seconds > 0
        if sys.platform.startswith("linux"):
            assert r.peak_anon >= r.baseline_anon > 0 and r.peak_file > 0
    assert report.tile_wall_seconds == pytest.approx(sum(r.wall_seconds for r in net))
    share = 1 - sum(r.seconds for r in net) / report.tile_wall_seconds
    assert report.overhead_share == pytest.approx(share) and 0 < share < 1
    assert report.peak_anon == max(r.peak_anon for r in net)
    assert report.tile_anon == max(r.peak_anon - r.baseline_anon for r in net)


def test_pause_holds_new_tiles_until_resumed(client, volume, tmp_path):
    dest = tmp_path / "p.ome.zarr"
    job = TiledCompressor(volume, dest, client=client, **SETTINGS)
    run = job.run()
    while not isinstance(next(run), TiledStarted):
        pass
    job.pause()
    box: list = []
    thread = threading.Thread(target=lambda: box.append(next(run)))
    thread.start()
    # The run takes the pause in before it sends any tile; then nothing is in flight and the
    # generator holds (a generous timeout: the verdict waits on the run, not on the clock).
    assert job.wait_held(timeout=120)
    assert thread.is_alive() and not box and job.in_flight == frozenset()
    assert [index for index, _ in existing_chunks(dest)] == [(1, 1, 1)]  # the constant tile
    job.resume()
    thread.join()
    assert isinstance(box[0], TileFinished)
    report = drain(run)
    assert not report.stopped and len(dict(existing_chunks(dest))) == 26


def test_command_line_on_tiled_stores(client, volume, tmp_path, capsys):
    from napari_moec.cli import main

    source = tmp_path / "v.npy"
    np.save(source, volume)
    dest = tmp_path / "cli.ome.zarr"
    address = client.scheduler.address
    flags = ["--ratio", "16", "--tile", "16", "--margin", "2", "--steps", "25",
             "--batch-size", "1024", "--scheduler", address, "--quiet",
             "--model", "siren"]  # fmt: skip
    assert main(["compress", str(source), str(dest), *flags]) == 0
    assert "ratio" in capsys.readouterr().out
    assert main(["info", str(dest)]) == 0
    text = capsys.readouterr().out
    assert "25 networks, 1 constant, 1 empty" in text and "overhead" in text
    assert main(["info", str(dest), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    # 10 bytes per network tile (kind, 3 index varints, width, experts, CRC); the constant tile
    # costs 8 besides its value (kind, index, CRC); the empty tile is absent.
    assert info["ratio"] >= 16 and info["tile_overhead_bytes"] == 25 * 10 + 8
    out = tmp_path / "part.tif"
    assert main(["decompress", str(dest), str(out), "--roi", "0:10,:,:", "--stride", "2"]) == 0
    assert tifffile.imread(out).shape == (5, 20, 20)
    full = tmp_path / "full.npy"
    assert main(["decompress", str(dest), str(full), "--labels", str(tmp_path / "l.npy")]) == 0
    assert np.array_equal(np.load(full), open_tiled(dest).decode())
    assert np.load(tmp_path / "l.npy").dtype == np.uint32
    assert main(["compress", str(tmp_path / "nope.npy"), str(dest), *flags]) == 2
    assert "input not found" in capsys.readouterr().err
    assert main(["compress", str(source), str(dest), *flags]) == 2  # exists, no --overwrite
    assert "overwrite" in capsys.readouterr().err
    other = str(tmp_path / "pinned.ome.zarr")
    assert main(["compress", str(source), other, *flags, "--pin-workers"]) == 2
    assert "local cluster" in capsys.readouterr().err
    local = [f for f in flags if f not in ("--scheduler", address)]
    too_many = str(len(os.sched_getaffinity(0)) + 1) if hasattr(os, "sched_getaffinity") else "1"
    if too_many != "1":
        assert main(["compress", str(source), other, *local, "--pin-workers",
                     "--workers", too_many]) == 2  # fmt: skip
        assert "one core per worker" in capsys.readouterr().err


def test_4d_and_constant_volumes(client, tmp_path):
    series = np.stack([smooth_volume((20, 20, 20), seed=s) for s in range(3)])  # TZYX
    dest = tmp_path / "t.ome.zarr"
    # 4D networks are slower to start than 3D ones: 100 steps (25 gave 14.9 dB).
    report = compress_tiled(series, dest, 16, tile=(3, 10, 10, 10), margin=(0, 2, 2, 2),
                            train=replace(TRAIN, steps=100), client=client,
                            progress=False, arch=SIREN)  # fmt: skip
    assert report.total_tiles == 8 and report.ratio >= 16 and report.psnr > 15
    store = open_tiled(dest)
    assert store.axes == "TZYX" and store.decode(stride=(1, 2, 2, 2)).shape == (3, 10, 10, 10)
    flat = np.full((64, 64, 64), 7, np.uint16)
    report = compress_tiled(flat, tmp_path / "flat.ome.zarr", 64, tile=32, client=client,
                            progress=False)  # fmt: skip
    assert report.empty_tiles == 8 and report.chunk_bytes == 0 and report.psnr == float("inf")
    assert (open_tiled(tmp_path / "flat.ome.zarr").decode() == 7).all()
    with pytest.raises(ConfigError, match="metadata alone takes"):
        compress_tiled(flat[:20, :20, :20], tmp_path / "tiny.ome.zarr", 64, tile=10,
                       client=client, progress=False)  # fmt: skip
    with pytest.raises(ConfigError, match="thinner than a 3D volume"):
        TiledCompressor(np.zeros((33, 40, 40), np.uint16), tmp_path / "x.ome.zarr", tile=16,
                        margin=0)  # fmt: skip


def test_a_float32_region_normalised_in_place_gives_the_same_store(client, volume, tmp_path):
    """A tile that reads its float32 region itself (an ``.npy`` source) normalises it in
    place (issue 24: one copy of the region); a region the client sends is not touched. Both
    write the same chunks, and neither the file nor the caller's array changes."""
    data = volume.astype(np.float32) * 0.5
    kept = data.copy()
    path = tmp_path / "v.npy"
    np.save(path, data)
    stores = {}
    for name, source in (("file", path), ("array", data)):
        dest = tmp_path / f"{name}.ome.zarr"
        compress_tiled(source, dest, client=client, progress=False, **SETTINGS)
        stores[name] = dest
    np.testing.assert_array_equal(data, kept)
    np.testing.assert_array_equal(np.load(path), kept)
    chunks = sorted(p.relative_to(stores["file"]) for p in stores["file"].rglob("c/*/*/*"))
    assert len(chunks) >= 20
    for chunk in chunks:
        assert (stores["file"] / chunk).read_bytes() == (stores["array"] / chunk).read_bytes()
