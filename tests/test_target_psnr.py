"""A target PSNR (``--psnr`` / ``target_psnr=``, grid family): one training run, then the
smallest file whose decoded PSNR over the data range reaches the target; the promise is in
the file and in ``moec info``; bad values get one clear error."""

from __future__ import annotations

import math

import numpy as np
import pytest

import napari_moec
from napari_moec import cli
from napari_moec.errors import ConfigError, MoecFormatError, TrainingError
from napari_moec.families.grid.fit import fit_quality, pack_model
from napari_moec.families.grid.sizing import auto_config
from napari_moec.families.grid.train import GridTrainer, TrainSettings
from napari_moec.format import TrainingSummary
from napari_moec.metrics import psnr
from napari_moec.training import Compressor, quality_mse

from .conftest import smooth_volume

#: The window the issue asks for: [P, P + WINDOW] dB.
WINDOW = 0.3


def _ct_head():
    from napari_moec._napari.sample_data import ct_head

    return ct_head()


@pytest.mark.parametrize(
    ("name", "target", "steps"),
    [("hipct", 29.0, 150), ("ct_head", 27.0, 150)],
)
def test_decoded_psnr_lands_in_the_window(name, target, steps, hipct, tmp_path):
    volume = hipct if name == "hipct" else _ct_head()
    c = napari_moec.compress(volume, target_psnr=target, model="grid", steps=steps, device="cpu")
    path = tmp_path / "v.moec"
    c.save(path)
    loaded = napari_moec.load(path)
    got = psnr(volume, loaded.decode())
    assert target <= got <= target + WINDOW, got
    assert c.report.psnr == pytest.approx(got, abs=0.01)
    assert loaded.header.train.target_psnr == target
    # the ceiling: no larger than the default cap, and far smaller at this target
    assert c.report.file_bytes <= volume.nbytes / 8
    assert c.report.ratio > 16


def test_a_ratio_is_a_byte_ceiling(hipct):
    with pytest.raises(TrainingError, match="not reached within"):
        napari_moec.compress(hipct, 2000, target_psnr=45.0, model="grid", steps=20, device="cpu")


def test_fit_quality_keeps_the_smallest_payload_that_passes():
    vol = smooth_volume((20, 20, 20)).astype(np.float32)
    x = (vol - vol.min()) / (vol.max() - vol.min()) * 2 - 1
    cfg = auto_config(x.shape, 3000)
    trainer = GridTrainer(
        x, cfg, 3000, TrainSettings(steps=60), target_mse=quality_mse(30, (-1, 1))
    )
    for _ in trainer.run():
        pass
    plain = pack_model(trainer.model)
    top = -10 * math.log10(-trainer.score(plain) / 4)

    def psnr_of(data: bytes) -> float:
        return 10 * math.log10(4 / -trainer.score(data))

    low, high = top - 1.5, top - 0.5
    fit_low = fit_quality(trainer.model, 3000, psnr_of, low)
    fit_high = fit_quality(trainer.model, 3000, psnr_of, high)
    assert low <= fit_low.score <= low + WINDOW
    assert high <= fit_high.score <= high + WINDOW
    assert len(fit_low.payload) < len(fit_high.payload) <= len(plain)
    with pytest.raises(TrainingError, match=r"not reached .*best"):
        fit_quality(trainer.model, 3000, psnr_of, top + 20)


@pytest.mark.parametrize("bad", [0.0, -3.0, math.nan, math.inf, "40"])
def test_bad_targets_get_one_clear_error(bad, volume16):
    with pytest.raises(ConfigError, match="target_psnr"):
        napari_moec.compress(volume16, target_psnr=bad, model="grid", steps=1)


def test_siren_has_no_quality_target(volume16):
    with pytest.raises(ConfigError, match="target PSNR needs --model grid"):
        Compressor(
            volume16,
            arch=napari_moec.ArchConfig(model="siren"),
            train=napari_moec.TrainConfig(target_psnr=40.0),
        )


def test_tiled_stores_of_siren_tiles_refuse_a_target(tmp_path, volume16, capsys):
    """Tiles of the grid family take ``--psnr`` (tests/test_tiled_bound.py); SIREN has no
    quality target, and says so before any cluster starts."""
    np.save(tmp_path / "v.npy", volume16)
    out = tmp_path / "v.ome.zarr"
    argv = ["compress", str(tmp_path / "v.npy"), str(out), "--psnr", "40", "--model", "siren"]
    assert cli.main(argv) == 2
    assert "target PSNR needs --model grid" in capsys.readouterr().err
    assert not out.exists()


def test_cli_needs_a_ratio_or_a_target(tmp_path, volume16, capsys):
    np.save(tmp_path / "v.npy", volume16)
    assert cli.main(["compress", str(tmp_path / "v.npy"), str(tmp_path / "v.moec")]) == 2
    assert "--ratio R or --psnr P" in capsys.readouterr().err


def test_cli_compress_and_info_state_the_promise(tmp_path, capsys):
    vol = smooth_volume((24, 24, 24))
    np.save(tmp_path / "v.npy", vol)
    out = tmp_path / "v.moec"
    args = ["compress", str(tmp_path / "v.npy"), str(out), "--psnr", "17", "--model", "grid"]
    assert cli.main([*args, "--steps", "80", "--device", "cpu", "--quiet"]) == 0
    assert "target PSNR 17 dB" in capsys.readouterr().out
    assert psnr(vol, napari_moec.load(out).decode()) >= 17
    assert cli.main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "promised >= 17 dB" in text and "ratio" in text


def test_summary_round_trips_the_target_and_rejects_bad_ones():
    for target in (31.5, None):
        summary = TrainingSummary(10, 30.0, 1.0, "cpu", target)
        doc = summary.to_json()
        assert ("target" in doc) == (target is not None)  # other files keep their bytes
        assert TrainingSummary.from_json(doc) == summary
    for bad in (0, -1.0, math.nan, "40", True):
        with pytest.raises(MoecFormatError, match="target PSNR"):
            TrainingSummary.from_json({**doc, "target": bad})


def test_widget_target_choice_gives_a_quality_target(qtbot):
    """The settings' "Target: ratio | PSNR" choice: PSNR shows its own box, hides the ratio
    and hands the Compressor the target with the default ceiling; back to ratio clears it."""
    from napari_moec._napari.widget_settings import SettingsPanel
    from napari_moec.training import PSNR_CAP_RATIO

    panel = SettingsPanel()
    qtbot.addWidget(panel)
    panel.show()
    assert panel.compressor_kwargs()["train"].target_psnr is None
    assert panel.ratio.native.isVisible() and not panel.psnr.native.isVisible()
    panel.set_values(target_psnr=35.5, ratio=64)
    kwargs = panel.compressor_kwargs()
    assert kwargs["train"].target_psnr == 35.5 and kwargs["ratio"] == PSNR_CAP_RATIO
    assert panel.psnr.native.isVisible() and not panel.ratio.native.isVisible()
    panel.target.value = "ratio"
    kwargs = panel.compressor_kwargs()
    assert kwargs["train"].target_psnr is None and kwargs["ratio"] == 64


def test_a_model_over_the_byte_cap_is_trimmed_to_it_when_the_target_allows():
    """Under a quality target the budget is only a ceiling; a run can end with latents whose
    plain payload exceeds it. A finer latent step only adds bytes: the fit zeroes the smallest
    latents until the payload fits, and keeps it when it still reaches the target."""
    import torch

    from napari_moec.families.grid.config import GridConfig
    from napari_moec.families.grid.model import GridModel

    model = GridModel(GridConfig((16, 16, 16), num_levels=2, first_level=0, hidden=4))
    with torch.no_grad():
        for y in model.grids.latents:
            y.normal_(0, 5, generator=torch.Generator().manual_seed(0))
    cap = len(pack_model(model)) // 2
    fit = fit_quality(model, cap, lambda data: 30.0, 25.0)  # every payload "reaches" it
    assert len(fit.payload) <= cap and fit.zeroed > 0
    with pytest.raises(TrainingError, match="not reached"):
        fit_quality(model, cap, lambda data: 20.0, 25.0)  # none does
