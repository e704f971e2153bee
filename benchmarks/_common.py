"""Shared helpers of the benchmark scripts: the volumes, provenance (commit, machine), JSON, and
the one napari-moec measurement they all make (:func:`compress_and_measure`: compress, save,
load, decode from the file, measure).

The scripts run as ``python benchmarks/<name>.py`` from the repository root. The classical
codecs live in ``benchmarks/codecs.py``, whose name shadows the standard library's ``codecs``
module, so it is loaded by path (:func:`load_codecs`) rather than imported.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
#: ``../shared/data`` next to the repository, or ``$MOEC_DATA``.
DATA = Path(os.environ.get("MOEC_DATA", ROOT.parent / "shared" / "data"))
OUT = ROOT / "benchmarks" / "out"

VOLUMES = {
    "hipct": "hipct_brain_sci_64.tif",
    "ct_head": "ct_head_vtk_headsq.tif",
    "mri4d": "mri_4d_epi_nibabel_afni_example4d.tif",
    "macaque": "mri_t1_macaque_inia19_mricron.tif",
}
#: Voxel spacing (Z, Y, X) or (T, Z, Y, X) as the data README states it; None when unknown.
SPACING = {
    "hipct": None,
    "ct_head": (1.5, 3.2, 3.2),
    "mri4d": (3.0, 3.0, 3.0, 3.0),
    "macaque": (0.5, 0.5, 0.5),
}


def load_volume(name: str, data: Path = DATA) -> np.ndarray:
    import tifffile

    if name not in VOLUMES:
        raise SystemExit(f"unknown volume {name!r}: choose from {', '.join(VOLUMES)}")
    path = Path(data) / VOLUMES[name]
    if not path.exists():
        raise SystemExit(f"{path} not found: set MOEC_DATA to the folder of the shared volumes")
    return np.ascontiguousarray(tifffile.imread(path))


def load_codecs() -> ModuleType:
    name = "moec_benchmark_codecs"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / "codecs.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def git_commit() -> dict:
    def git(*args: str) -> str:
        out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
        return out.stdout.strip()

    dirty = git("status", "--porcelain", "--", "src", "benchmarks")
    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(dirty)}


def machine(device: str | None = None) -> dict:
    import torch

    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "numpy": np.__version__,
        # other processes on the machine slow every timing: the 1-minute load at the end
        "load_average_1min": round(os.getloadavg()[0], 2),
    }
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        if names:
            info["cpu_model"] = names[0]
    except OSError:
        pass
    if device is not None:
        info["device"] = device
        if device.startswith("cuda") and torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
            info["cuda"] = torch.version.cuda
    return info


def command() -> str:
    return " ".join(shlex.quote(a) for a in ["python", *sys.argv])


def provenance(device: str | None = None) -> dict:
    return {
        "command": command(),
        **git_commit(),
        "machine": machine(device),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _clean(value):
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, np.ndarray):
        return _clean(value.tolist())
    if isinstance(value, np.generic):
        return _clean(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


def write_json(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(_clean(record), indent=1, sort_keys=False) + "\n")
    tmp.replace(path)


def quality(reference: np.ndarray, test: np.ndarray) -> dict:
    """PSNR over the reference's data range (max - min) and 3D SSIM (napari_moec.metrics)."""
    from napari_moec.metrics import psnr, ssim

    return {
        "psnr": round(psnr(reference, test), 3),
        "ssim": round(ssim(reference, test), 4),
        "psnr_dtype": round(psnr(reference, test, "dtype"), 3),
    }


#: Classical methods of rd.py, in the order tables show them.
CLASSICAL = [
    "hevc",
    "hevc_lean",
    "h264",
    "h264_lean",
    "jpeg2000",
    "jpeg2000_j2k",
    "decimate",
    "hevc_ds2",
    "hevc_ds2_lean",
    "sz3",
    "zfp",
    "sperr",
    "tthresh",
]


@dataclass
class MoecRun:
    """One napari-moec compression, measured on what its saved file decodes to.

    ``status`` is "ok" or "no network fits" (then ``reason`` says why and the rest is None).
    ``seconds`` is the wall time of ``napari_moec.compress`` (training, rate control, the
    in-memory decode); ``decode_seconds`` the decode of the reloaded file; ``file_bytes`` the
    file's size on disk; ``quality`` :func:`quality` of the decode against the original.
    """

    status: str
    seconds: float
    reason: str | None = None
    compressed: object = None  # napari_moec.Compressed
    path: Path | None = None
    file_bytes: int | None = None
    decode_seconds: float | None = None
    decoded: np.ndarray | None = None
    quality: dict | None = None


def compress_and_measure(
    volume: np.ndarray, ratio: float, path: Path | None = None, **options
) -> MoecRun:
    """Compress ``volume`` to ``ratio``, save the file, reload it, decode it from disk, measure.

    Parameters
    ----------
    volume, ratio
        As for :func:`napari_moec.compress`.
    path
        Where to keep the ``.moec`` file; None: a temporary file, deleted afterwards.
    **options
        :func:`napari_moec.compress` options (``steps=``, ``train=``, ``quant=``,
        ``device=``...); None values are left out, so they mean the library's default.
        ``device`` also decodes the file.
    """
    import napari_moec
    from napari_moec import ConfigError

    options = {k: v for k, v in options.items() if v is not None}
    t0 = time.perf_counter()
    try:
        compressed = napari_moec.compress(volume, ratio=ratio, **options)
    except ConfigError as exc:
        return MoecRun("no network fits", time.perf_counter() - t0, reason=str(exc))
    seconds = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        file = Path(tmp) / "volume.moec" if path is None else Path(path)
        file.parent.mkdir(parents=True, exist_ok=True)
        compressed.save(file)
        file_bytes = file.stat().st_size  # the bytes on disk, not the in-memory object
        t1 = time.perf_counter()
        decoded = napari_moec.load(file).decode(device=options.get("device"))
        decode_seconds = time.perf_counter() - t1
    return MoecRun(
        "ok",
        seconds,
        compressed=compressed,
        path=None if path is None else Path(path),
        file_bytes=file_bytes,
        decode_seconds=decode_seconds,
        decoded=decoded,
        quality=quality(volume, decoded),
    )
