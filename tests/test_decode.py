import numpy as np
import pytest
import torch

from napari_moec.config import ModelConfig
from napari_moec.decode import evaluate, parse_roi
from napari_moec.errors import ConfigError
from napari_moec.families.siren.moe import MoESiren


@pytest.fixture
def model():
    torch.manual_seed(0)
    return MoESiren(ModelConfig(hidden_features=8, num_experts=3))


@pytest.mark.parametrize("stride", [1, 2, 3, (1, 2, 3)])
def test_roi_and_stride_equal_slices_of_full_decode(model, stride):
    shape = (9, 10, 11)
    full = evaluate(model, shape, chunk_voxels=97)
    roi = "2:8,:,3:11"
    part = evaluate(model, shape, roi, stride, chunk_voxels=50)
    s = stride if isinstance(stride, tuple) else (stride,) * 3
    # Equal up to float rounding: BLAS sums in a batch-size dependent order (1 ulp).
    np.testing.assert_allclose(part, full[2 : 8 : s[0], :: s[1], 3 : 11 : s[2]], rtol=0, atol=1e-6)
    labels = evaluate(model, shape, roi, stride, labels=True)
    full_labels = evaluate(model, shape, labels=True)
    np.testing.assert_array_equal(labels, full_labels[2 : 8 : s[0], :: s[1], 3 : 11 : s[2]])
    assert labels.dtype == np.uint8


def test_parse_roi_forms():
    shape = (10, 20, 30)
    assert parse_roi(None, shape) == (slice(0, 10), slice(0, 20), slice(0, 30))
    assert parse_roi("1:5, :, -10:", shape) == (slice(1, 5), slice(0, 20), slice(20, 30))
    assert parse_roi([(1, 5), None, slice(2, 3)], shape)[2] == slice(2, 3)
    for bad in ("1:5,:", "a:b,:,:", "5:1,:,:", "1:2:3,:,:"):
        with pytest.raises(ConfigError):
            parse_roi(bad, shape)


def test_bad_stride(model):
    with pytest.raises(ConfigError):
        evaluate(model, (4, 4, 4), stride=0)
