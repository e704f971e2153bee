import numpy as np
import pytest
from skimage.metrics import structural_similarity

from napari_moec.metrics import psnr, ssim


def test_psnr_data_range_and_dtype_range():
    ref = np.array([[[0, 100], [200, 1000]]] * 2, dtype=np.uint16)
    test = ref.copy()
    test[0, 0, 0] += 10
    mse = 100 / ref.size
    assert psnr(ref, test) == pytest.approx(10 * np.log10(1000**2 / mse))
    assert psnr(ref, test, "dtype") == pytest.approx(10 * np.log10(65535**2 / mse))
    assert psnr(ref, ref) == float("inf")


def test_ssim_matches_skimage_3d():
    rng = np.random.default_rng(0)
    ref = rng.random((12, 14, 16))
    test = ref + 0.1 * rng.standard_normal(ref.shape)
    expected = structural_similarity(ref, test, data_range=ref.max() - ref.min())
    assert ssim(ref, test) == pytest.approx(expected, abs=1e-9)
