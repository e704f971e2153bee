"""The model family as one declared option (``--model``, ``model=``, the widget's Model): both
families through the CLI and the API, and a store refusing what its tiles cannot hold."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
import torch

import napari_moec as nm
from napari_moec.cli import main
from napari_moec.config import ArchConfig
from napari_moec.errors import ConfigError
from napari_moec.metrics import psnr
from napari_moec.tiled.runner import TiledCompressor

from .conftest import SHARED_DATA


@pytest.fixture(scope="module")
def hipct():
    path = SHARED_DATA / "hipct_brain_sci_64.tif"
    if not path.exists():
        pytest.skip("shared data not present")
    return tifffile.imread(path)


def test_cli_compresses_decodes_and_describes_a_grid_file(hipct, tmp_path, capsys):
    src, out = tmp_path / "v.tif", tmp_path / "v.moec"
    tifffile.imwrite(src, hipct)
    args = ["--ratio", "256", "--model", "grid", "--experts", "2", "--steps", "150"]
    assert main(["compress", str(src), str(out), *args, "--threads", "1"]) == 0
    assert out.stat().st_size <= hipct.nbytes // 256
    capsys.readouterr()
    assert main(["info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["model"]["family"] == "grid" and info["model"]["num_experts"] == 2
    assert main(["info", str(out)]) == 0
    assert "grid: " in capsys.readouterr().out
    dec, lab = tmp_path / "d.tif", tmp_path / "l.tif"
    assert main(["decompress", str(out), str(dec), "--labels", str(lab)]) == 0
    decoded = tifffile.imread(dec)
    assert decoded.dtype == hipct.dtype and decoded.shape == hipct.shape
    assert psnr(hipct, decoded) > 25.0  # 150 steps reach ~28-29 dB at 256x
    labels = tifffile.imread(lab)
    assert labels.shape == hipct.shape and len(np.unique(labels)) == 2  # both experts used


def test_api_model_option_picks_the_family_and_files_say_which(hipct, tmp_path):
    grid = nm.compress(hipct, 256, model="grid", steps=40, threads=1)
    siren = nm.compress(hipct, 256, model="siren", steps=40, threads=1)
    assert grid.header.family == "grid" and siren.header.family == "siren"
    for c in (grid, siren):
        path = c.save(tmp_path / f"{c.header.family}.moec")
        again = nm.load(path)
        assert again.header.family == c.header.family
        # the compressor decoded on its one thread: so does the file here (with another
        # thread count a matmul may round one voxel the other way)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            np.testing.assert_array_equal(again.decode(), c.decode())
        finally:
            torch.set_num_threads(threads)
        part = again.decode(roi="3:40,:,10:50", stride=2)
        np.testing.assert_array_equal(part, c.decode()[3:40, :, 10:50][::2, ::2, ::2])


def test_unknown_model_is_one_clear_error(hipct):
    with pytest.raises(ConfigError, match="model"):
        nm.compress(hipct, 256, model="wavelet", steps=1)


def test_a_store_takes_the_model_option_and_checks_it_before_any_work(hipct, tmp_path):
    job = TiledCompressor(hipct, tmp_path / "s.ome.zarr", 64, arch=ArchConfig(model="grid"))
    assert job.arch.model == "grid"  # grid tiles: tests/test_tiled_family.py
    with pytest.raises(ConfigError, match="model"):
        TiledCompressor(hipct, tmp_path / "s.ome.zarr", 64, arch=ArchConfig(model="wavelet"))
    assert not (tmp_path / "s.ome.zarr").exists()


def test_tutel_backend_is_refused_for_the_grid_family():
    """The grid family's dispatch is its own: asking for Tutel says so before any work."""
    from napari_moec import Compressor, RunConfig

    volume = np.random.default_rng(0).integers(0, 4000, (16, 16, 16)).astype(np.uint16)
    with pytest.raises(ConfigError, match="counting sort"):
        Compressor(volume, 8, arch=ArchConfig(model="grid"), run=RunConfig(backend="tutel"))
    auto = Compressor(volume, 8, arch=ArchConfig(model="grid"), run=RunConfig(backend="auto"))
    assert auto.backend == "native"


def test_a_grid_file_at_the_smallest_budget_trains_saves_and_decodes(hipct, tmp_path):
    """3000x of a 64³ uint16 volume is 174 bytes: one-layer experts (sizing's lean ladder)."""
    compressed = nm.compress(hipct, ratio=3000, steps=60, seed=0)
    assert compressed.header.model.expert_layers == 1
    path = tmp_path / "tiny.moec"
    compressed.save(path)
    assert path.stat().st_size <= hipct.nbytes // 3000
    decoded = nm.load(path).decode()
    assert decoded.shape == hipct.shape
    assert psnr(hipct, decoded) > 15.0  # a 60-step model of the brain, not a constant
