"""Run on a machine with a CUDA GPU (the `device` tool); skipped elsewhere."""

import numpy as np
import pytest

import napari_moec as nm
from napari_moec import TrainConfig

from .conftest import smooth_volume

pytestmark = pytest.mark.cuda


def test_compress_on_cuda_matches_cpu_quality():
    vol = smooth_volume((24, 24, 24))
    train = TrainConfig(steps=300, batch_size=4096)
    gpu = nm.compress(vol, 16, train=train, device="cuda")
    cpu = nm.compress(vol, 16, train=train, device="cpu")
    assert gpu.report.device.startswith("cuda")
    assert gpu.nbytes <= gpu.report.budget_bytes
    assert abs(gpu.report.psnr - cpu.report.psnr) < 1.5
    # GPU and CPU kernels round differently: decoded voxels may differ by one level.
    reread = nm.Compressed.from_bytes(gpu.data).decode().astype(np.int64)
    assert np.abs(gpu.decode(device="cuda").astype(np.int64) - reread).max() <= 1
