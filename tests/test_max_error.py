"""``--max-error`` end to end: every decoded voxel of a saved file within the bound, on real
volumes, both model families, integer and float data, whole and ROI/stride decodes; bad bounds
and hostile correction bytes get clear errors."""

from __future__ import annotations

import dataclasses
import struct
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

import napari_moec as nm
from napari_moec import bounded, correction, correction_codec, training
from napari_moec.cli import main
from napari_moec.config import BoundConfig, ModelConfig
from napari_moec.errors import ConfigError, MoecFormatError
from napari_moec.families.siren.moe import MoESiren
from napari_moec.format import frame, unpack
from napari_moec.sampling import Normalization

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _real(name: str, crop) -> np.ndarray:
    path = DATA / name
    if not path.exists():
        pytest.skip(f"shared volume {name} not here")
    return np.ascontiguousarray(tifffile.imread(path)[crop])


def hipct() -> np.ndarray:  # uint16, 7437 of 65535 levels used
    return _real("hipct_brain_sci_64.tif", np.s_[8:40, 8:44, 12:48])


def macaque() -> np.ndarray:  # float32 MRI
    return _real("mri_t1_macaque_inia19_mricron.tif", np.s_[40:72, 80:120, 60:100])


def ct_head() -> np.ndarray:  # uint16
    return _real("ct_head_vtk_headsq.tif", np.s_[30:62, 10:50, 12:48])


def mri4d() -> np.ndarray:  # uint16, 4D
    return _real("mri_4d_epi_nibabel_afni_example4d.tif", np.s_[:2, :, :, :])


def _errors(decoded: np.ndarray, original: np.ndarray) -> np.ndarray:
    return np.abs(decoded.astype(np.float64) - original.astype(np.float64))


CASES = {
    "siren-hipct-uint16-abs": (hipct, "siren", {"max_error": 40.0}),
    "grid-ct_head-uint16-rel": (ct_head, "grid", {"max_error_rel": 0.01}),
    "siren-macaque-float32-rel": (macaque, "siren", {"max_error_rel": 0.02}),
    "grid-macaque-float32-abs": (macaque, "grid", {"max_error": 2.5}),
    "siren-mri4d-uint16-abs": (mri4d, "siren", {"max_error": 3.0}),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def saved(request, tmp_path_factory):
    make, model, bound = CASES[request.param]
    volume = make()
    c = nm.compress(volume, 32, model=model, steps=20, device="cpu", threads=1, **bound)
    path = c.save(tmp_path_factory.mktemp("maxerr") / "v.moec")
    if "max_error" in bound:
        promised = bound["max_error"]
    else:
        promised = bound["max_error_rel"] * (float(volume.max()) - float(volume.min()))
    return volume, c, path, promised


def test_every_voxel_of_the_saved_file_is_within_the_bound(saved):
    volume, c, path, promised = saved
    loaded = nm.load(path)
    assert loaded.max_error == pytest.approx(promised) and c.max_error == loaded.max_error
    decoded = loaded.decode()
    assert decoded.dtype == volume.dtype and decoded.shape == volume.shape
    assert _errors(decoded, volume).max() <= promised
    # The writer's own decode is the file's.
    assert _errors(c.decode(), volume).max() <= promised


def test_roi_and_stride_decodes_keep_the_bound(saved):
    volume, _, path, promised = saved
    loaded = nm.load(path)
    lead = (slice(None),) * (volume.ndim - 3)
    for roi, stride in (
        ((*lead, slice(3, 29), slice(0, 17), slice(5, 33)), 1),
        (None, 3),
        ((*lead, slice(1, 30), slice(7, 39), slice(2, 30)), (*((1,) * len(lead)), 2, 3, 5)),
    ):
        part = loaded.decode(roi=roi, stride=stride)
        steps = (stride,) * volume.ndim if isinstance(stride, int) else stride
        slices = roi or (slice(None),) * volume.ndim
        want = volume[
            tuple(slice(s.start, s.stop, st) for s, st in zip(slices, steps, strict=True))
        ]
        assert part.shape == want.shape
        assert _errors(part, want).max() <= promised
    labels = loaded.expert_labels(stride=2)
    assert labels.dtype == np.uint8 and labels.shape == loaded.decode(stride=2).shape


def test_report_and_info_state_the_bound_and_the_ratio_reached(saved):
    volume, c, path, promised = saved
    r = c.report
    assert r.max_error == pytest.approx(promised)
    assert 0 <= r.max_error_measured <= promised
    assert r.correction_bytes == c.header.correction > 0
    assert r.file_bytes == c.nbytes == path.stat().st_size
    assert r.ratio == pytest.approx(volume.nbytes / c.nbytes)
    header, payload, _ = _split(c.data)  # the model's file kept the ratio's budget
    assert len(frame(dataclasses.replace(header, correction=0), payload)) <= r.budget_bytes
    info = nm.load(path).info()
    assert info["max_error"] == pytest.approx(promised)
    assert info["correction_bytes"] == r.correction_bytes


def test_integer_edges_and_a_bound_below_one_level_is_lossless():
    # ct_head stretched over the whole uint8 range: 0 and 255 both occur.
    v = ct_head()[:16].astype(np.float64)
    v = np.rint((v - v.min()) / (v.max() - v.min()) * 255).astype(np.uint8)
    assert v.min() == 0 and v.max() == 255
    c = nm.compress(v, 32, steps=10, device="cpu", threads=1, max_error=0.5)
    assert np.array_equal(nm.Compressed.from_bytes(c.data).decode(), v)
    c = nm.compress(v, 32, steps=10, device="cpu", threads=1, max_error=3)
    assert _errors(nm.Compressed.from_bytes(c.data).decode(), v).max() <= 3


def test_files_without_a_bound_have_no_correction():
    c = nm.compress(hipct(), 256, steps=5, device="cpu", threads=1)
    assert c.header.correction == 0 and c.max_error is None and c.report.max_error is None
    assert "e" not in c.header.to_json()


@pytest.mark.parametrize(
    "bound",
    [
        {"max_error": 0},
        {"max_error": -1.0},
        {"max_error": float("nan")},
        {"max_error": float("inf")},
        {"max_error_rel": 0.0},
        {"max_error_rel": 1.5},
        {"max_error": 1.0, "max_error_rel": 0.01},
        {"max_error": "five"},
    ],
)
def test_bad_bounds_are_one_clear_error(bound):
    with pytest.raises(ConfigError, match="max_error"):
        nm.compress(hipct(), 32, steps=1, device="cpu", **bound)


def test_a_bound_below_float32_resolution_fails_before_training():
    v = macaque()
    with pytest.raises(ConfigError, match="max_error"):
        nm.Compressor(v, 32, bound=BoundConfig(max_error=1e-9))


def test_cli_round_trip(tmp_path, capsys):
    volume = ct_head()
    src = tmp_path / "in.tif"
    tifffile.imwrite(src, volume)
    out = tmp_path / "out.moec"
    argv = ["compress", str(src), str(out), "--ratio", "32", "--max-error-rel", "0.02"]
    assert main([*argv, "--steps", "15", "--device", "cpu", "--threads", "1", "--quiet"]) == 0
    promised = 0.02 * (float(volume.max()) - float(volume.min()))
    assert "(guaranteed)" in capsys.readouterr().out
    assert main(["info", str(out)]) == 0
    assert f"max error   <= {promised:g} (guaranteed)" in capsys.readouterr().out
    full, part = tmp_path / "full.npy", tmp_path / "part.npy"
    assert main(["decompress", str(out), str(full)]) == 0
    assert _errors(np.load(full), volume).max() <= promised
    assert main(["decompress", str(out), str(part), "--roi", "4:20,:,10:30", "--stride", "2"]) == 0
    assert _errors(np.load(part), volume[4:20:2, ::2, 10:30:2]).max() <= promised


def test_cli_rejects_bad_bounds_and_tiled_outputs(tmp_path, capsys):
    src = tmp_path / "in.tif"
    tifffile.imwrite(src, ct_head())
    base = ["compress", str(src), str(tmp_path / "o.moec"), "--ratio", "32", "--steps", "1"]
    assert main([*base, "--max-error", "0"]) == 2
    assert "max_error" in capsys.readouterr().err
    assert main([*base, "--max-error", "2", "--max-error-rel", "0.1"]) == 2
    assert "not both" in capsys.readouterr().err
    # Tiled stores take a bound too (tests/test_tiled_bound.py); bad values fail the same way.
    tiled = ["compress", str(src), str(tmp_path / "o.ome.zarr"), "--ratio", "32"]
    assert main([*tiled, "--max-error-rel", "0"]) == 2
    assert "max_error_rel" in capsys.readouterr().err


# -- hostile correction bytes in a full file --------------------------------------------------
@pytest.fixture(scope="module")
def bounded_file() -> tuple[bytes, np.ndarray]:
    volume = hipct()
    c = nm.compress(volume, 64, steps=10, device="cpu", threads=1, max_error=60.0)
    return c.data, volume


def _split(data: bytes):
    header, _ = unpack(data, decode_weights=False)
    (hlen,) = struct.unpack_from("<H", data, 10)
    end = len(data) - 4 - header.correction
    return header, data[12 + hlen : end], data[end:-4]


def _reframe(data: bytes, mutate) -> bytes:
    header, payload, raw = _split(data)
    raw = bytes(mutate(bytearray(raw)))
    return frame(dataclasses.replace(header, correction=len(raw)), payload, raw)


def _set(offset: int, value: bytes):
    def mutate(raw: bytearray) -> bytearray:
        raw[offset : offset + len(value)] = value
        return raw

    return mutate


def _too_many_classes(raw: bytearray) -> bytearray:
    sig_rows, _, sign_rows = correction_codec.TABLE_ROWS[raw[0]]
    return _set(41 + sig_rows + sign_rows, bytes([200]))(raw)


# Offsets in a 3D uint16 stream: 3 fixed bytes, 12 shape, 6 chunk, 8 bound, 8 step, 4 range,
# the probabilities (how many: the version's), 1 class count.
HOSTILE = {
    "version": _set(0, b"\x07"),
    "dtype code": _set(1, b"\x09"),
    "dtype of another volume": _set(1, b"\x03"),
    "ndim": _set(2, b"\x05"),
    "shape": _set(3, struct.pack("<I", 7)),
    "chunk edge 0": _set(15, struct.pack("<H", 0)),
    "huge chunk": _set(15, struct.pack("<3H", 1024, 1024, 1024)),
    "bound NaN": _set(21, struct.pack("<d", float("nan"))),
    "negative step": _set(29, struct.pack("<d", -1.0)),
    "empty clip range": _set(37, struct.pack("<2H", 9, 3)),
    "probability byte 0": _set(41, b"\x00"),
    "too many classes": _too_many_classes,
    "truncated": lambda raw: raw[:-5],
    "trailing byte": lambda raw: raw + b"\x01",
    "cut to the header": lambda raw: raw[:30],
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_correction_bytes_are_a_format_error(bounded_file, name):
    data, _ = bounded_file
    hostile = _reframe(data, HOSTILE[name])
    with pytest.raises(MoecFormatError):
        nm.Compressed.from_bytes(hostile).decode()


def test_a_wrong_correction_length_is_a_format_error(bounded_file):
    data, _ = bounded_file
    _, payload, raw = _split(data)
    # Beyond the file, shorter or longer than the stream (the payload then has bytes too
    # many or too few), 0 written out, negative, not an integer: all refused.
    for bad in (len(raw) + len(payload) + 50, len(raw) - 4, len(raw) + 4, 0, -3, 2.5, True):
        with pytest.raises(MoecFormatError):
            nm.Compressed.from_bytes(_with_header_e(data, bad)).decode()


def _with_header_e(data: bytes, value) -> bytes:
    import json
    import zlib

    from napari_moec.format import HEADER_DICT

    header, payload, raw = _split(data)
    doc = header.to_json() | {"e": value}
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"))
    comp = zlib.compressobj(9, zlib.DEFLATED, -15, 9, zlib.Z_DEFAULT_STRATEGY, HEADER_DICT)
    head = comp.compress(text.encode()) + comp.flush()
    body = data[:10] + struct.pack("<H", len(head)) + head + payload + raw
    return body + struct.pack("<I", zlib.crc32(body))


def test_valid_reframe_still_decodes_within_the_bound(bounded_file):
    data, volume = bounded_file
    same = _reframe(data, lambda raw: raw)
    assert same == data  # the test helpers rebuild the file byte for byte
    assert _errors(nm.Compressed.from_bytes(same).decode(), volume).max() <= 60.0


# -- router near-ties (SIREN MoE) ------------------------------------------------------------
def test_router_ties_are_found_and_anchored_voxels_keep_the_bound():
    model = MoESiren(ModelConfig(in_features=3, hidden_features=8, num_experts=2, top_k=1))
    shape = (6, 7, 8)
    with torch.no_grad():
        last = model.gate.linears[2]
        last.weight[1] = last.weight[0]
        last.bias[1] = last.bias[0]
    tied = bounded.router_unstable(model, shape, torch.device("cpu"))
    assert tied.shape == shape and tied.all()
    with torch.no_grad():
        last.bias[1] = last.bias[0] + 5.0  # expert 1 always wins by 5
    assert not bounded.router_unstable(model, shape, torch.device("cpu")).any()
    one = MoESiren(ModelConfig(in_features=3, hidden_features=8, num_experts=1, top_k=1))
    assert bounded.router_unstable(one, shape, torch.device("cpu")) is None

    volume = hipct()[:6, :7, :8]
    norm = Normalization.of(volume)
    values = norm.apply(volume) + np.float32(0.05)  # a prediction off by a few levels
    raw, decoded, worst = bounded.encode(volume, values, norm, 10.0, unstable=tied)
    assert worst <= 10.0 and _errors(decoded, volume).max() <= 10.0
    # Anchored voxels ignore the prediction: any reader output decodes within the bound.
    c = bounded.Bounded(correction.parse(raw, volume.shape, volume.dtype), norm)
    wild = np.random.default_rng(0).uniform(-3, 3, volume.shape)
    assert _errors(c.apply(wild), volume).max() <= 10.0


# -- the widget's settings ------------------------------------------------------------------
@pytest.mark.gui
def test_the_widget_offers_the_bound_and_tiled_mode_passes_it_on(qtbot):
    pytest.importorskip("napari")
    from napari.layers import Image

    from napari_moec._napari.widget_request import make_request
    from napari_moec._napari.widget_settings import SettingsPanel
    from napari_moec._napari.widget_tiled import engine_kwargs

    panel = SettingsPanel()
    qtbot.addWidget(panel)
    assert panel.controls["max_error"].value is None  # off until asked for
    assert panel.controls["max_error_rel"].value is None
    assert panel.compressor_kwargs()["bound"] == BoundConfig()
    panel.set_values(max_error=5.0)
    assert panel.compressor_kwargs()["bound"] == BoundConfig(max_error=5.0)
    panel.set_values(max_error_rel=0.01)
    with pytest.raises(ConfigError, match="not both"):
        panel.compressor_kwargs()
    panel.set_values(max_error_rel=None)

    layer = Image(np.zeros((4, 5, 6), np.uint16), name="v")
    tiled = {"mode": "tiled", "tile": None, "workers": None, "scheduler": None}
    request = make_request([layer], "v", panel.compressor_kwargs, lambda: tiled)
    assert request.bound == BoundConfig(max_error=5.0) and request.configs["bound"] is request.bound
    assert engine_kwargs(request)["bound"] == BoundConfig(max_error=5.0)  # every tile keeps it


def test_the_network_share_of_a_bounded_file_is_chosen_by_measurement(monkeypatch):
    """One training run, the network stored at shares of its budget, each with its verified
    correction: the file kept is the smallest, never larger than the full-budget network's,
    and at a tight bound (the residual is noise) a smaller network wins."""
    volume = hipct()
    options = dict(steps=30, device="cpu", threads=1, model="grid", max_error_rel=0.01)
    chosen = nm.compress(volume, 64, **options)
    monkeypatch.setattr(training, "BOUND_SHARES", (1.0,))
    full = nm.compress(volume, 64, **options)
    assert chosen.report.file_bytes <= full.report.file_bytes
    network = chosen.report.file_bytes - chosen.report.correction_bytes
    assert network < full.report.file_bytes - full.report.correction_bytes
    for c in (chosen, full):
        decoded = nm.Compressed.from_bytes(c.data).decode()
        error = np.abs(decoded.astype(np.float64) - volume.astype(np.float64)).max()
        assert error <= c.report.max_error
