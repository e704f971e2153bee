import json

import numpy as np
import pytest
import tifffile

import napari_moec as nm
from napari_moec.cli import main

from .conftest import smooth_volume

FAST = ["--steps", "30", "--batch-size", "1024", "--quiet"]


@pytest.fixture
def tif(tmp_path):
    path = tmp_path / "vol.tif"
    vol = smooth_volume((12, 14, 16))
    tifffile.imwrite(
        path,
        vol,
        imagej=True,
        resolution=(1 / 0.5, 1 / 0.5),
        metadata={"spacing": 2.0, "unit": "um", "axes": "ZYX"},
    )
    return path


def test_compress_info_decompress(tif, tmp_path, capsys):
    out = tmp_path / "vol.moec"
    assert main(["compress", str(tif), str(out), "--ratio", "8", *FAST]) == 0
    assert "ratio" in capsys.readouterr().out
    c = nm.load(out)
    assert c.header.spacing == (2.0, 0.5, 0.5) and c.header.unit == "um"
    assert out.stat().st_size <= 12 * 14 * 16 * 2 // 8

    assert main(["info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["file_bytes"] == out.stat().st_size and info["shape"] == [12, 14, 16]
    assert main(["info", str(out)]) == 0
    assert "experts" in capsys.readouterr().out

    dec, labels = tmp_path / "dec.tif", tmp_path / "labels.tif"
    args = [
        "decompress",
        str(out),
        str(dec),
        "--labels",
        str(labels),
        "--roi",
        "2:10,:,4:",
        "--stride",
        "2",
    ]
    assert main(args) == 0
    got = tifffile.imread(dec)
    np.testing.assert_array_equal(got, c.decode("2:10,:,4:", 2))
    assert tifffile.imread(labels).shape == got.shape


def test_npy_input(tmp_path):
    src = tmp_path / "v.npy"
    np.save(src, smooth_volume((10, 10, 10), dtype=np.float32))
    assert main(["compress", str(src), str(tmp_path / "v.moec"), "--ratio", "4", *FAST]) == 0
    assert main(["decompress", str(tmp_path / "v.moec"), str(tmp_path / "d.npy")]) == 0
    assert np.load(tmp_path / "d.npy").dtype == np.float32


def error_of(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.count("\n") == 0, "one line, no traceback"
    return err


@pytest.mark.parametrize(
    ("array", "match"),
    [
        (np.zeros((16, 16), np.uint16), "3D"),
        (np.zeros((8, 8, 3), np.uint8), "RGB"),
        (np.full((8, 8, 8), 3, np.uint16), "constant"),
        (np.full((8, 8, 8), np.nan, np.float32), "NaN"),
        (np.zeros((8, 8, 8), np.float64), "dtype"),
    ],
)
def test_bad_inputs_give_one_line(tmp_path, capsys, array, match):
    src = tmp_path / "bad.npy"
    np.save(src, array)
    err = error_of(capsys, ["compress", str(src), str(tmp_path / "o.moec"), "--ratio", "4"])
    assert match in err


def test_ratio_errors(tif, tmp_path, capsys):
    out = str(tmp_path / "o.moec")
    assert "ratio" in error_of(capsys, ["compress", str(tif), out, "--ratio", "0.5"])
    err = error_of(capsys, ["compress", str(tif), out, "--ratio", "5000"])
    assert "highest possible ratio" in err
    assert not (tmp_path / "o.moec").exists()


def test_missing_and_corrupt_files(tmp_path, capsys):
    assert "not found" in error_of(
        capsys, ["compress", str(tmp_path / "none.tif"), str(tmp_path / "o.moec"), "--ratio", "4"]
    )
    assert "No such file" in error_of(capsys, ["info", str(tmp_path / "none.moec")])
    bad = tmp_path / "bad.moec"
    bad.write_bytes(b"\x89MoE\r\n\x1a\n\x01\x00" + b"\x00" * 40)
    assert "checksum" in error_of(capsys, ["info", str(bad)])
    assert "magic" in error_of(capsys, ["decompress", str(tif_like(tmp_path)), "x.tif"])


def tif_like(tmp_path):
    path = tmp_path / "fake.moec"
    path.write_bytes(b"II*\x00" + b"\x00" * 100)
    return path
