"""Intensity normalisation: the values of the float64 formula, without its whole-array
temporaries (a tile's region is normalised inside a worker with a memory limit)."""

import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from napari_moec import sampling
from napari_moec.sampling import Normalization


def _whole_array(norm: Normalization, array: np.ndarray) -> np.ndarray:
    """The formula on the whole array at once (what ``apply`` computed before it went slab
    by slab)."""
    return ((array.astype(np.float64) - norm.vmin) * norm.scale + norm.lo).astype(np.float32)


@settings(max_examples=60, deadline=None)
@given(
    array=st.sampled_from([np.uint8, np.uint16, np.int16, np.float32, np.float64]).flatmap(
        lambda dtype: hnp.arrays(
            dtype,
            hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=7),
            elements=hnp.from_dtype(np.dtype(dtype), allow_nan=False, allow_infinity=False)
            if np.dtype(dtype).kind in "iu"
            else st.floats(-1e6, 1e6, width=8 * np.dtype(dtype).itemsize),
        )
    ),
    slab=st.integers(1, 50),
    transpose=st.booleans(),
)
def test_slabs_give_the_whole_array_formulas_bits(array, slab, transpose):
    if transpose:
        array = array.T  # not C-contiguous: slabs of a view
    norm = Normalization(float(np.min(array, initial=0)), float(np.max(array, initial=0)) + 1.5)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sampling, "APPLY_SLAB_VOXELS", slab)
        got = norm.apply(array)
    assert got.dtype == np.float32 and got.shape == array.shape
    np.testing.assert_array_equal(got, _whole_array(norm, array))


def test_the_peak_is_the_result_plus_a_slab():
    """numpy reports its buffers to tracemalloc: normalising a 32 MB float32 array allocates
    its 32 MB result and one slab's float64 buffer (8 MB), where the whole-array formula
    peaked at two float64 copies (128 MB)."""
    array = np.random.default_rng(0).random((128, 256, 256), dtype=np.float32)
    norm = Normalization.of(array)
    tracemalloc.start()
    try:
        out = norm.apply(array)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        _whole_array(norm, array)
        _, whole_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert out.nbytes == array.nbytes
    assert peak <= array.nbytes + 8 * sampling.APPLY_SLAB_VOXELS + (1 << 20)
    assert whole_peak >= 3 * array.nbytes  # the test can tell them apart


@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
def test_a_constant_volume_and_a_scalar(dtype):
    norm = Normalization(0.0, 10.0)
    np.testing.assert_array_equal(norm.apply(np.full((3, 4), 5, dtype)), np.zeros((3, 4)))
    assert norm.apply(np.asarray(10, dtype)) == 1.0


def test_in_place_gives_the_same_bits_and_a_wrong_out_is_refused(monkeypatch):
    monkeypatch.setattr(sampling, "APPLY_SLAB_VOXELS", 37)  # slabs of one 6x7 plane
    array = np.random.default_rng(1).normal(size=(9, 6, 7)).astype(np.float32)
    norm = Normalization.of(array)
    expected = _whole_array(norm, array)
    got = norm.apply(array, out=array)
    assert got is array
    np.testing.assert_array_equal(array, expected)
    with pytest.raises(ValueError, match="float32"):
        norm.apply(array, out=np.empty(array.shape, np.float64))
    with pytest.raises(ValueError, match="shape"):
        norm.apply(array, out=np.empty((9, 6), np.float32))
