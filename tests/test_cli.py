import json
import shlex
import signal
import subprocess
import sys

import numpy as np
import pytest
import tifffile

import napari_moec as nm
from napari_moec.cli import _parser, configs_from, main, option_flags
from napari_moec.config import (
    OPTION_CONFIGS,
    ArchConfig,
    BoundConfig,
    QuantConfig,
    RunConfig,
    TrainConfig,
    option_fields,
)

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


def parsed(*flags):
    """The configs ``moec compress`` builds from ``flags``."""
    args = _parser().parse_args(["compress", "in.tif", "out.moec", "--ratio", "8", *flags])
    return configs_from(args)


def test_every_declared_option_has_a_flag(capsys):
    """The flags come from the option() declarations: one per field, with its help."""
    with pytest.raises(SystemExit):
        main(["compress", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    for cls in OPTION_CONFIGS.values():
        for f in option_fields(cls):
            assert option_flags(f)[0] in help_text, f.name
            assert " ".join(f.metadata["option"]["help"].split()) in help_text, f.name
    assert "(default: auto: every core this process may use)" in help_text


def test_flags_not_given_keep_the_dataclass_defaults():
    configs = parsed()
    assert configs == {
        "arch": ArchConfig(),
        "train": TrainConfig(),
        "quant": QuantConfig(),
        "run": RunConfig(),
        "bound": BoundConfig(),
    }


def test_todays_flag_names_set_the_declared_options():
    configs = parsed(
        *shlex.split(
            "--experts 3 --top-k 2 --layers 2 --steps 5 --time-limit 10 --batch-size 100"
            " --lr 0.01 --balance-weight 0 --capacity-factor 2 --freeze-at 0.5 --precision fp16"
            " --per-channel --device cpu --seed 3 --threads 1 --w0-first 12"
        )
    )
    assert configs["arch"] == ArchConfig(num_experts=3, top_k=2, expert_layers=2, w0_first=12.0)
    assert configs["train"] == TrainConfig(
        steps=5,
        time_limit=10.0,
        batch_size=100,
        lr=0.01,
        balance_weight=0.0,
        capacity_factor=2.0,
        freeze_router_at=0.5,
        seed=3,
    )
    assert configs["quant"] == QuantConfig("fp16", per_channel=True)
    assert configs["run"] == RunConfig(device="cpu", threads=1)
    # the field names work too, and "auto" gives None back to napari-moec
    configs = parsed("--num-experts", "auto", "--freeze-router-at", "0.25", "--no-entropy")
    assert configs["arch"].num_experts is None
    assert configs["train"].freeze_router_at == 0.25
    assert configs["quant"] == QuantConfig(entropy=False)


def test_out_of_range_option_gives_one_line(tif, tmp_path, capsys):
    err = error_of(
        capsys, ["compress", str(tif), str(tmp_path / "o.moec"), "--ratio", "4", "--lr", "2"]
    )
    assert "lr" in err and "(0, 1)" in err


def test_progress_in_a_log_is_whole_lines(tif, tmp_path, capsys):
    """stderr is not a terminal here: progress comes as lines, never carriage returns."""
    out = tmp_path / "vol.moec"
    assert (
        main(
            [
                "compress",
                str(tif),
                str(out),
                "--ratio",
                "8",
                "--steps",
                "30",
                "--batch-size",
                "1024",
            ]
        )
        == 0
    )
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = err.splitlines()
    assert lines[0].startswith("training ") and "30/30" in err
    assert lines[-1].startswith("quantizing")


def test_ctrl_c_stops_training_and_keeps_the_best_model(tmp_path):
    """The first Ctrl-C (SIGINT) ends training at the next step; the file is still written."""
    src, out = tmp_path / "v.npy", tmp_path / "v.moec"
    np.save(src, smooth_volume((10, 10, 10)))
    argv = [
        sys.executable,
        "-m",
        "napari_moec.cli",
        "compress",
        str(src),
        str(out),
        "--ratio",
        "4",
        "--steps",
        "100000000",
        "--batch-size",
        "256",
        "--threads",
        "1",
    ]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stderr.readline()  # printed once training has started
        assert first.startswith("training "), first + proc.stderr.read()
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr
    assert "stopping: keeping the best model so far" in stderr
    assert "stopped early" in stdout
    assert nm.load(out).nbytes <= 10**3 * 2 // 4


def test_the_one_ctrl_c_handler_stops_first_and_interrupts_second():
    """``stop_on_interrupt`` (both ``moec compress`` paths): the first SIGINT asks the job to
    stop and calls ``on_stop``; the second raises KeyboardInterrupt; the old handler returns."""
    import os

    from napari_moec._terminal import stop_on_interrupt

    calls = []

    class Job:
        def stop(self):
            calls.append("stop")

    previous = signal.getsignal(signal.SIGINT)
    with (
        pytest.raises(KeyboardInterrupt),
        stop_on_interrupt(Job(), lambda: calls.append("note")) as interrupted,
    ):
        os.kill(os.getpid(), signal.SIGINT)
        assert interrupted.is_set() and calls == ["stop", "note"]
        os.kill(os.getpid(), signal.SIGINT)
    assert calls == ["stop", "note"]
    assert signal.getsignal(signal.SIGINT) is previous
