"""Quality promises on tiled stores end to end on a Dask cluster (issue 23 item 3): ``max_error``
(every tile carries a verified correction: stream 1.2) and ``target_psnr`` (every grid tile the
smallest that reaches P over the store's range), through the API and ``moec``. Real crops,
a few steps a tile."""

from __future__ import annotations

import json
import sys

import cloudpickle
import numpy as np
import pytest
import tifffile
import zarr

from napari_moec import compress_tiled, open_tiled
from napari_moec.config import ArchConfig, BoundConfig, TrainConfig
from napari_moec.errors import ConfigError
from napari_moec.tiled.runner import TiledCompressor

from .conftest import SHARED_DATA

distributed = pytest.importorskip("distributed")
cloudpickle.register_pickle_by_value(sys.modules[__name__])

FAST = TrainConfig(steps=20, batch_size=1024, report_every=10)
TILING = {"tile": 16, "margin": 2}
CONSTANT = (slice(16, 32), slice(16, 32), slice(16, 30))  # tile (1, 1, 1)


def _crop(name: str, dtype) -> np.ndarray:
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"shared data not found: {path}")
    data = tifffile.imread(path)
    z, y, x = (np.array(data.shape) - (32, 32, 30)) // 2
    volume = data[z : z + 32, y : y + 32, x : x + 30].astype(dtype)
    return volume


@pytest.fixture(scope="module")
def hipct() -> np.ndarray:
    return _crop("hipct_brain_sci_64.tif", np.uint16)


def _errors(decoded: np.ndarray, volume: np.ndarray) -> np.ndarray:
    return np.abs(decoded.astype(np.float64) - volume.astype(np.float64))


@pytest.mark.parametrize("which", ["uint16", "float32"])
def test_every_voxel_of_a_bounded_store_keeps_the_bound(client, hipct, tmp_path, which):
    if which == "uint16":
        volume = hipct.copy()
    else:
        volume = _crop("mri_t1_macaque_inia19_mricron.tif", np.float32)
    volume[CONSTANT] = volume.flat[0]  # a constant tile: exact, any bound
    dest = tmp_path / "b.ome.zarr"
    report = compress_tiled(volume, dest, 16, client=client, progress=False, train=FAST,
                            bound=BoundConfig(max_error_rel=0.02), **TILING)  # fmt: skip
    span = float(volume.max()) - float(volume.min())
    bound = 0.02 * span
    assert (
        report.max_error == pytest.approx(bound) and report.constant_tiles + report.empty_tiles == 1
    )
    decoded = zarr.open_array(dest / "0", mode="r")[:]
    errors = _errors(decoded, volume)
    assert errors.max() <= bound and errors.max() == report.max_error_measured
    assert (errors[CONSTANT] == 0).all()
    store = open_tiled(dest)
    assert np.array_equal(store.decode(), decoded)
    part = store.decode(roi="3:31,1:29,2:30", stride=(2, 3, 1))
    assert _errors(part, volume[3:31:2, 1:29:3, 2:30]).max() <= bound
    # Exact errors (each tile decoded from its bytes when written): the report is the truth.
    true_psnr = 10 * np.log10(1 / np.mean((errors / span) ** 2))
    assert report.psnr == pytest.approx(true_psnr, abs=1e-6)
    on_disk = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
    assert on_disk == report.store_bytes and report.ratio == volume.nbytes / on_disk
    assert report.correction_bytes > 0
    info = store.info()
    assert info["max_error"] == pytest.approx(bound) and info["target_psnr"] is None
    assert info["max_error_measured"] == pytest.approx(report.max_error_measured, rel=1e-5)
    assert info["correction_bytes"] == report.correction_bytes
    assert (
        json.loads((dest / "0" / "zarr.json").read_text())["codecs"][0]["configuration"]["version"]
        == "1.2"
    )


def test_psnr_store_lands_at_the_target(client, tmp_path):
    """Every tile reaches P over the store's range, so the store does; on 32^3 tiles the
    payload's knobs are fine enough that each lands within a few tenths (16^3 tiles of ~100
    bytes can overshoot by more: their smallest payload is already above P)."""
    path = SHARED_DATA / "hipct_brain_sci_64.tif"
    if not path.exists():
        pytest.skip(f"shared data not found: {path}")
    volume = tifffile.imread(path)
    target = 24.0
    dest = tmp_path / "p.ome.zarr"
    train = TrainConfig(steps=300, batch_size=1024, target_psnr=target)
    report = compress_tiled(volume, dest, None, client=client, progress=False, train=train,
                            arch=ArchConfig(model="grid"), tile=32, margin=2)  # fmt: skip
    decoded = zarr.open_array(dest / "0", mode="r")[:]
    span = float(volume.max()) - float(volume.min())
    errors = (_errors(decoded, volume) / span) ** 2
    true_psnr = 10 * np.log10(1 / np.mean(errors))
    assert target <= true_psnr <= target + 0.3
    grid = open_tiled(dest).spec.grid
    for index in grid.indices():
        assert 10 * np.log10(1 / np.mean(errors[grid.tile_slices(index)])) >= target
    assert report.psnr == pytest.approx(true_psnr, abs=1e-6) and report.target_psnr == target
    assert report.target_ratio == 8 and report.ratio >= 8  # the default ceiling held
    info = open_tiled(dest).info()
    assert info["target_psnr"] == target and info["psnr"] == round(true_psnr, 2)
    assert info["max_error"] is None


def test_bad_promises_fail_before_any_training(client, tmp_path):
    volume = np.zeros((16, 16, 16), np.float32)
    volume[4:12] = np.linspace(0, 1e6, 16, dtype=np.float32)
    with pytest.raises(ConfigError, match="target PSNR needs --model grid"):
        TiledCompressor(volume, tmp_path / "s.ome.zarr", train=TrainConfig(target_psnr=30),
                        arch=ArchConfig(model="siren"))  # fmt: skip
    with pytest.raises(ConfigError, match="not both"):
        BoundConfig(max_error=1, max_error_rel=0.1)
    job = TiledCompressor(volume, tmp_path / "f.ome.zarr", 4, client=client, train=FAST,
                          bound=BoundConfig(max_error=1e-9), **TILING)  # fmt: skip
    with pytest.raises(ConfigError, match="float32 resolution"):
        job.fit()
    assert not any((tmp_path / "f.ome.zarr").rglob("c/*"))  # no chunk was written


def test_command_line_promises(client, hipct, tmp_path, capsys):
    from napari_moec.cli import main

    source = tmp_path / "v.npy"
    np.save(source, hipct)
    common = [str(source), "--tile", "16", "--margin", "2", "--batch-size", "1024",
              "--scheduler", client.scheduler.address, "--quiet"]  # fmt: skip
    bounded = tmp_path / "b.ome.zarr"
    argv = ["compress", str(bounded), "--ratio", "16", "--steps", "20", "--max-error-rel", "0.02"]
    assert main([argv[0], common[0], *argv[1:], *common[1:]]) == 0
    assert "max error   <= " in capsys.readouterr().out
    assert main(["info", str(bounded)]) == 0
    assert "(guaranteed), measured" in capsys.readouterr().out
    assert main(["info", str(bounded), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["max_error"] == pytest.approx(0.02 * (float(hipct.max()) - float(hipct.min())))
    full = tmp_path / "full.npy"
    assert main(["decompress", str(bounded), str(full)]) == 0
    assert _errors(np.load(full), hipct).max() <= info["max_error"]
    capsys.readouterr()
    quality = tmp_path / "q.ome.zarr"
    argv = ["compress", common[0], str(quality), "--psnr", "20", "--steps", "150", *common[1:]]
    assert main(argv) == 0
    assert "target PSNR 20 dB" in capsys.readouterr().out
    assert main(["info", str(quality)]) == 0
    assert "promised >= 20 dB" in capsys.readouterr().out
    for flags, words in [(["--max-error-rel", "0"], "max_error_rel"),
                         (["--max-error-rel", "1.5"], "max_error_rel"),
                         (["--max-error", "-2"], "max_error"),
                         (["--max-error", "2", "--max-error-rel", "0.1"], "not both"),
                         (["--psnr", "0"], "target_psnr"),
                         (["--psnr", "30", "--model", "siren"], "--model grid")]:  # fmt: skip
        out = tmp_path / "bad.ome.zarr"
        assert main(["compress", common[0], str(out), "--ratio", "16", *flags, *common[1:]]) == 2
        err = capsys.readouterr().err.strip()
        assert words in err and len(err.splitlines()) == 1, err
        assert not out.exists()


def test_a_bounded_run_resumes_and_measures_the_tiles_it_finds(client, hipct, tmp_path):
    """Stopped after two tiles, its log lost (a crash between a worker's write and the
    client's log line): the resumed run keeps those chunks, measures them from their bytes,
    and the finished store keeps the bound with the measured maximum."""
    from napari_moec.tiled.events import TileFinished
    from napari_moec.tiled.store import RESULTS_LOG, existing_chunks

    dest = tmp_path / "r.ome.zarr"
    options = dict(client=client, train=FAST, bound=BoundConfig(max_error=150), **TILING)
    job = TiledCompressor(hipct, dest, 16, **options)
    run = job.run()
    finished = 0
    for event in run:
        finished += isinstance(event, TileFinished)
        if finished == 2:
            job.stop()
    kept = {i: p.read_bytes() for i, p in existing_chunks(dest)}
    assert 2 <= len(kept) < 8
    (dest / RESULTS_LOG).unlink()
    report = TiledCompressor(hipct, dest, 16, **options).fit()
    assert not report.stopped and report.resumed == len(kept)
    for index, data in kept.items():
        assert (dest / "0" / "c").joinpath(*map(str, index)).read_bytes() == data
    errors = _errors(zarr.open_array(dest / "0", mode="r")[:], hipct)
    assert errors.max() <= 150 and errors.max() == report.max_error_measured
