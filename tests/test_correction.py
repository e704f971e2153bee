"""The --max-error correction layer: the bound on every voxel, regions, bad input, hostile bytes.

The network is not in the loop: a Gaussian blur of the volume stands in for its prediction
(smooth, wrong at edges, overshooting nothing), which is what the layer has to correct.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import tifffile
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import ndimage

from napari_moec import correction, correction_codec
from napari_moec.config import ModelConfig
from napari_moec.correction import (
    BoundViolation,
    apply,
    codes,
    encode,
    parse,
    plan_bound,
    resolve_max_error,
    verify,
)
from napari_moec.decode import evaluate
from napari_moec.errors import ConfigError, MoecFormatError
from napari_moec.families.siren.moe import MoESiren
from napari_moec.sampling import Normalization

from .conftest import SHARED_DATA, smooth_volume

REAL = {
    "hipct": ("hipct_brain_sci_64.tif", None),
    "ct_head": ("ct_head_vtk_headsq.tif", None),
    "mri4d": ("mri_4d_epi_nibabel_afni_example4d.tif", None),
    # a crop keeps the test quick on a shared machine; it spans background and brain
    "macaque": ("mri_t1_macaque_inia19_mricron.tif", np.s_[40:88, 50:150, 30:130]),
}


def _real(name: str) -> np.ndarray:
    file, crop = REAL[name]
    path = SHARED_DATA / file
    if not path.exists():
        pytest.skip(f"shared data not found: {path}")
    x = tifffile.imread(path)
    return np.ascontiguousarray(x[crop] if crop is not None else x)


def _blur(x: np.ndarray) -> np.ndarray:
    sigma = (0,) * (x.ndim - 3) + (1.5, 1.5, 1.5)
    return ndimage.gaussian_filter(x.astype(np.float64), sigma)


def _error(out: np.ndarray, x: np.ndarray) -> float:
    return float(np.abs(out.astype(np.float64) - x.astype(np.float64)).max())


@pytest.mark.parametrize("rel", [0.01, 0.05])
@pytest.mark.parametrize("name", list(REAL))
def test_bound_holds_on_every_voxel_of_real_volumes(name, rel):
    x = _real(name)
    y = _blur(x)
    value_range = (x.min(), x.max())
    bound = resolve_max_error(max_error_rel=rel, value_range=value_range)
    data = encode(x, y, bound)
    stream = parse(data, x.shape, x.dtype)
    out = apply(stream, y)
    assert out.dtype == x.dtype and out.shape == x.shape
    assert _error(out, x) <= bound
    assert verify(x, y, data) == _error(out, x)
    # Without the correction the stand-in misses the bound: the layer did the work.
    assert _error(np.clip(y, *value_range), x) > bound
    assert len(data) < x.nbytes / 4
    # A reader whose network output differs by up to the margin (another device, another
    # summation order) still gets every voxel within the bound.
    _, margin = plan_bound(bound, x.dtype, value_range)
    shaken = y + np.random.default_rng(1).uniform(-margin, margin, y.shape)
    assert _error(apply(stream, shaken), x) <= bound
    assert _error(apply(stream, y + margin), x) <= bound
    assert _error(apply(stream, y - margin), x) <= bound


@pytest.mark.parametrize("max_error", [0.4, 1.0, 2.5, 37.0])
@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16"])
def test_integer_bound_at_the_edges_of_the_dtype(dtype, max_error):
    info = np.iinfo(dtype)
    rng = np.random.default_rng(7)
    x = rng.integers(info.min, info.max, size=(5, 19, 23), endpoint=True).astype(dtype)
    x[0, 0, :4] = [info.min, info.max, info.min, info.max]
    x[-1, -1, -4:] = [info.max, info.min, info.max, info.min]
    y = x.astype(np.float64) + rng.normal(0, 4 * max_error + 3, x.shape)
    # the prediction overshoots the dtype's range both ways, where clipping must not wrap
    y[0, 0, :4] = [info.min - 1e4, info.max + 1e4, info.min - 0.3, info.max + 0.3]
    y[-1, -1, -4:] = [info.min - 5.0, info.max + 5.0, info.max, info.min]
    data = encode(x, y, max_error, value_range=(info.min, info.max), chunk=(2, 8, 8))
    out = apply(parse(data, x.shape, x.dtype), y)
    assert _error(out, x) <= math.floor(max_error)
    if max_error < 1:
        np.testing.assert_array_equal(out, x)  # a bound below one level is lossless


@pytest.mark.parametrize("offset", [0.0, 5e4, -3e6])
def test_float32_bound_including_large_magnitudes(offset):
    rng = np.random.default_rng(3)
    x = (smooth_volume((12, 20, 18), dtype=np.float32) * 10 + offset).astype(np.float32)
    x[0, 0, 0] = x.min() - 123.456
    y = x.astype(np.float64) + rng.standard_normal(x.shape) * 40
    width = float(x.max()) - float(x.min())
    for bound in (0.5, 1e-3 * width, 0.05 * width):
        data = encode(x, y, bound)
        stream = parse(data, x.shape, x.dtype)
        assert _error(apply(stream, y), x) <= bound
        _, margin = plan_bound(bound, x.dtype, (x.min(), x.max()))
        assert _error(apply(stream, y + margin), x) <= bound
        assert _error(apply(stream, y - margin), x) <= bound


def test_float32_bound_below_resolution_is_refused():
    x = (smooth_volume((6, 8, 8), dtype=np.float32) + 1e6).astype(np.float32)
    with pytest.raises(ConfigError, match="float32 resolution"):
        encode(x, x.astype(np.float64), 1e-4)


def test_a_bound_too_small_for_24_bit_codes_is_refused():
    x = smooth_volume((6, 8, 8), dtype=np.float32)
    x[0, 0, :2] = [-1e7, 1e7]  # float32 spacing 1 there, so E = 1 is above resolution
    with pytest.raises(ConfigError, match="too small"):
        encode(x, x.astype(np.float64), 1.0)


def test_exact_prediction_costs_only_the_header_and_index():
    x = smooth_volume((20, 30, 40))
    data = encode(x, x.astype(np.float64) + 0.2, 3.0, chunk=(8, 8, 8))
    stream = parse(data, x.shape, x.dtype)
    # the spec's header (3 + 4 ndim + 22 + 2 itemsize + 41 + 3 + 1 + 1 anchor count) and one
    # byte per chunk
    assert len(data) == 3 + 12 + 22 + 4 + 41 + 3 + 1 + 1 + 3 * 4 * 5
    assert stream.classes.shape[1] == 0
    np.testing.assert_array_equal(apply(stream, x + 0.2), x)


@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
def test_wiring_with_a_network_decoded_in_other_batches(dtype):
    """The recipe of the module doc with a real (untrained) network: the writer decodes it in
    one batching, the reader regions in another, whose sums round differently."""
    torch.manual_seed(0)
    model = MoESiren(ModelConfig(hidden_features=8, num_experts=3))
    x = smooth_volume((9, 10, 11), dtype=dtype)
    norm = Normalization.of(x)
    y = correction.data_units(evaluate(model, x.shape, chunk_voxels=97), norm)
    bound = resolve_max_error(max_error_rel=0.02, value_range=(x.min(), x.max()))
    stream = parse(encode(x, y, bound), x.shape, x.dtype)
    for roi, stride in ((None, 1), ("2:8,:,3:11", (1, 2, 3)), ("4:5,1:9,:", 2)):
        region = correction.data_units(evaluate(model, x.shape, roi, stride, chunk_voxels=50), norm)
        out = apply(stream, region, roi, stride)
        index = tuple(
            slice(s.start, s.stop, st)
            for s, st in zip(
                correction.parse_roi(roi, x.shape),
                (stride,) * 3 if isinstance(stride, int) else stride,
                strict=True,
            )
        )
        assert out.dtype == x.dtype
        assert _error(out, x[index]) <= bound


@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
def test_anchored_voxels_hold_whatever_the_reader_predicts(dtype):
    # An MoE whose router is nearly tied at a voxel may pick another expert on another
    # machine: its prediction there can be anything. Anchored voxels do not depend on it.
    rng = np.random.default_rng(8)
    x = smooth_volume((10, 20, 30), dtype=dtype)
    y = _blur(x)
    unstable = rng.random(x.shape) < 0.01
    unstable[0, 0, 0] = unstable[-1, -1, -1] = True
    bound = 0.02 * (float(x.max()) - float(x.min()))
    stream = parse(encode(x, y, bound, unstable=unstable, chunk=(4, 8, 8)), x.shape, x.dtype)
    assert stream.anchors.tolist() == np.flatnonzero(unstable).tolist()
    other = np.where(unstable, rng.uniform(-1e4, 1e4, x.shape), y)  # another expert's output
    out = apply(stream, other)
    assert _error(out, x) <= bound
    roi, stride = ("3:10,1:19,:", (2, 3, 1))
    index = np.s_[3:10:2, 1:19:3, :]
    np.testing.assert_array_equal(apply(stream, other[index], roi, stride), out[index])
    # without the anchors the same reader misses the bound: they are what keeps it (in a
    # network-coded stream; an absolute chunk would ignore the prediction altogether)
    plain = parse(encode(x, y, bound, version=2), x.shape, x.dtype)
    assert _error(apply(plain, other), x) > bound
    with pytest.raises(ConfigError, match="unstable"):
        encode(x, y, bound, unstable=unstable[:, :, :-1])
    with pytest.raises(ConfigError, match="unstable"):
        encode(x, y, bound, unstable=unstable.astype(np.uint8))


REGIONS = [
    (None, 1),
    (None, 3),
    ("2:9,5:30,:", (1, 2, 3)),
    ((slice(7, 8), None, (3, 40)), 2),
    ((slice(19, 20), slice(36, 37), slice(44, 45)), 1),
]


@pytest.mark.parametrize("version", correction_codec.VERSIONS)
@pytest.mark.parametrize("roi,stride", REGIONS)
def test_region_decode_is_the_slice_of_the_full_decode(roi, stride, version):
    rng = np.random.default_rng(5)
    x = smooth_volume((20, 37, 45))
    y = _blur(x) + rng.normal(0, 30, x.shape)
    data = encode(x, y, 40.0, chunk=(4, 8, 16), version=version)
    assert data[0] == version
    stream = parse(data, x.shape, x.dtype)
    slices = correction.parse_roi(roi, x.shape)
    strides = (stride,) * 3 if isinstance(stride, int) else stride
    index = tuple(slice(s.start, s.stop, st) for s, st in zip(slices, strides, strict=True))
    full_codes = codes(stream)
    assert full_codes.any()
    np.testing.assert_array_equal(codes(stream, roi, stride), full_codes[index])
    np.testing.assert_array_equal(apply(stream, y[index], roi, stride), apply(stream, y)[index])


def test_region_decode_on_a_4d_volume():
    x = _real("mri4d")
    y = _blur(x)
    data = encode(x, y, 0.02 * (float(x.max()) - float(x.min())), chunk=(16, 16, 16))
    stream = parse(data, x.shape, x.dtype)
    full = apply(stream, y)
    roi, stride = ((1, 3), (3, 20), None, (5, 30)), (1, 2, 1, 3)
    index = np.s_[1:3, 3:20:2, :, 5:30:3]
    np.testing.assert_array_equal(apply(stream, y[index], roi, stride), full[index])


def test_a_region_decodes_only_the_chunks_it_touches(monkeypatch):
    x = smooth_volume((32, 32, 32))
    y = x + np.random.default_rng(2).normal(0, 50, x.shape)
    stream = parse(encode(x, y, 10.0, chunk=(8, 8, 8)), x.shape, x.dtype)
    touched = []
    decode_chunk = correction.decode_chunk

    def spy(s, index, planes=None):
        touched.append((index, planes))
        return decode_chunk(s, index, planes)

    monkeypatch.setattr(correction, "decode_chunk", spy)
    # z 9..14 is planes 1..6 of the second chunk along z: it stops after plane 6
    codes(stream, ((9, 15), (0, 8), (30, 32)))
    assert touched == [((1, 0, 3), 7)]
    touched.clear()
    codes(stream, None, 8)  # voxels 0, 8, 16, 24 of each axis: one per chunk, 4^3 chunks
    assert len(touched) == 64 and {planes for _, planes in touched} == {1}


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf"), -float("inf"), "x", None])
def test_bad_bound_is_one_clear_error(bad):
    x = smooth_volume((6, 8, 8))
    with pytest.raises(ConfigError, match="max_error"):
        encode(x, x.astype(np.float64), bad)


def test_resolve_max_error_takes_exactly_one_valid_bound():
    assert resolve_max_error(max_error=5) == 5.0
    assert resolve_max_error(max_error_rel=0.01, value_range=(-100, 900)) == pytest.approx(10.0)
    for kwargs in (
        {},
        {"max_error": 1.0, "max_error_rel": 0.1, "value_range": (0, 1)},
        {"max_error_rel": 0.0, "value_range": (0, 1)},
        {"max_error_rel": float("nan"), "value_range": (0, 1)},
        {"max_error_rel": 0.1, "value_range": (3, 3)},
    ):
        with pytest.raises(ConfigError, match="max_error"):
            resolve_max_error(**kwargs)


def test_bad_inputs_to_encode_are_clear_errors():
    x = smooth_volume((6, 8, 8))
    y = x.astype(np.float64)
    with pytest.raises(ConfigError, match="prediction"):
        encode(x, y[:-1], 2.0)
    with pytest.raises(ConfigError, match="finite"):
        encode(x, np.where(y > y.mean(), np.nan, y), 2.0)
    with pytest.raises(ConfigError, match="original"):
        encode(x.astype(np.int32), y, 2.0)
    with pytest.raises(ConfigError, match="value_range"):
        encode(x, y, 2.0, value_range=(int(x.min()) + 1, int(x.max())))
    with pytest.raises(ConfigError, match="chunk"):
        encode(x, y, 2.0, chunk=(0, 8, 8))
    stream = parse(encode(x, y, 2.0), x.shape, x.dtype)
    with pytest.raises(ConfigError, match="region"):
        apply(stream, y[:, :4])
    with pytest.raises(ConfigError, match="NaN"):
        apply(stream, np.full(x.shape, np.inf))
    with pytest.raises(ConfigError, match="parsed"):
        codes(b"raw bytes")


def test_verify_rejects_a_stream_that_misses_the_bound():
    x = smooth_volume((10, 12, 14))
    y = _blur(x)
    data = encode(x, y, 20.0)
    with pytest.raises(BoundViolation, match=r"exceed max_error 20\.0"):
        verify(x, y + 100.0, data)
    with pytest.raises(BoundViolation, match=r"exceed max_error 5\.0"):
        verify(x, y, data, 5.0)


def test_verify_with_a_margin_catches_a_stream_fragile_to_float_noise():
    # residuals just under half a level: rounding keeps them exact, a nudge does not
    x = smooth_volume((6, 8, 8))
    y = x.astype(np.float64) + 0.5 - 1e-6
    data = encode(x, y, 0.3, margin=0.0)
    assert verify(x, y, data) == 0.0
    with pytest.raises(BoundViolation, match=r"shifted by 0\.01"):
        verify(x, y, data, margin=0.01)
    # with the default margin the writer quantizes so that the nudge is absorbed
    _, margin = plan_bound(0.3, x.dtype, (x.min(), x.max()))
    robust = encode(x, y, 0.3)
    assert verify(x, y, robust, margin=margin) == 0
    assert parse(robust, x.shape, x.dtype).anchors.size == 0


def test_residuals_on_a_cell_edge_are_anchored_not_refused():
    # y + margin lands exactly on x + 1/2, where rint rounds odd x up: the writer's check at
    # the margin fails there, so it anchors those voxels and verifies again
    x = smooth_volume((6, 8, 8))
    _, margin = plan_bound(0.3, x.dtype, (x.min(), x.max()))
    y = x.astype(np.float64) + (0.5 - margin)
    stream = parse(encode(x, y, 0.3), x.shape, x.dtype)
    odd = np.flatnonzero(x % 2 == 1)
    assert odd.size and stream.anchors.tolist() == odd.tolist()
    for shift in (-margin, 0.0, margin):
        np.testing.assert_array_equal(apply(stream, y + shift), x)


@pytest.fixture(scope="module", params=correction_codec.VERSIONS)
def sample(request):
    x = smooth_volume((9, 13, 11))
    y = x + np.random.default_rng(4).normal(0, 40, x.shape)
    return x, encode(x, y, 15.0, chunk=(4, 8, 8), version=request.param)


def test_every_truncation_and_extension_is_a_format_error(sample):
    x, data = sample
    for n in range(len(data)):
        with pytest.raises(MoecFormatError):
            parse(data[:n], x.shape, x.dtype)
    with pytest.raises(MoecFormatError):
        parse(data + b"\0\0\0\0", x.shape, x.dtype)


def _patched(data: bytes, offset: int, raw: bytes) -> bytes:
    return data[:offset] + raw + data[offset + len(raw) :]


def _tables_end(data: bytes, pos: int, rows, low: bool) -> int:
    """Where one set of tables that starts at ``pos`` ends (the layout of the stream doc)."""
    sig_rows, cls_rows, sign_rows = rows
    n_classes = data[pos + sig_rows + sign_rows]
    n_low = min(3, max(n_classes - 1, 0)) if low else 0
    end = pos + sig_rows + sign_rows + 1 + 2 * cls_rows * n_classes
    return end + sum(2 << k for k in range(1, n_low + 1))


def test_hostile_header_fields_are_format_errors(sample):
    x, data = sample
    version = data[0]
    shape_at, tail_at = 3, 3 + 12
    range_at = tail_at + correction_codec._TAIL.size
    tables_at = range_at + 4
    present = (True, False)
    if version == 3:  # a flags byte says which tables follow
        present = (bool(data[tables_at] & 1), bool(data[tables_at] & 2))
        tables_at += 1
    # the first table set present: the network's, else the absolute chunks'
    rows = correction_codec.TABLE_ROWS[version] if present[0] else correction_codec.interp.ROWS
    sig_rows, _, sign_rows = rows
    classes_at = tables_at + sig_rows + sign_rows
    cases = {
        "version": _patched(data, 0, b"\x07"),
        "dtype code": _patched(data, 1, b"\x09"),
        "ndim": _patched(data, 2, b"\x05"),
        "is for": _patched(data, shape_at, (2**32 - 1).to_bytes(4, "little")),
        "chunk": _patched(data, tail_at, (60000).to_bytes(2, "little")),
        "not positive": _patched(data, tail_at + 6, np.float64(np.nan).tobytes()),
        "clip range": _patched(data, range_at, np.array([9, 3], "<u2").tobytes()),
        "probability byte": _patched(data, tables_at, b"\0"),
        "byte 0 is not": _patched(data, classes_at - 1, b"\0"),
        "classes": _patched(data, classes_at, b"\x63"),
    }
    if version == 3:
        cases["table flags"] = _patched(data, tables_at - 1, b"\x07")
    anchors_at = tables_at
    if present[0]:
        anchors_at = _tables_end(data, anchors_at, correction_codec.TABLE_ROWS[version],
                                 version >= 2)  # fmt: skip
    if present[1]:
        anchors_at = _tables_end(data, anchors_at, correction_codec.interp.ROWS, True)
    assert data[anchors_at] == 0  # no anchors in this sample
    # 3 anchors at gaps 0, 0 and 5000: the last one falls outside the 9 x 13 x 11 volume
    outside = data[:anchors_at] + bytes([3, 0, 0, 0x88, 0x27]) + data[anchors_at + 1 :]
    cases["outside the volume"] = outside
    cases["anchors is truncated"] = _patched(data, anchors_at, b"\xff\x7f")
    for message, raw in cases.items():
        with pytest.raises(MoecFormatError, match=message):
            parse(raw, x.shape, x.dtype)
    with pytest.raises(MoecFormatError, match="is for"):
        parse(data, (9, 13, 12), x.dtype)
    with pytest.raises(MoecFormatError, match="is for"):
        parse(data, x.shape, np.int16)


def _decode_or_format_error(raw: bytes, shape, dtype) -> None:
    try:
        stream = parse(raw, shape, dtype)
        codes(stream, ((1, 3), None, (2, 9)), 2)  # partial chunks: decoding stops early
        out = codes(stream)
        values = apply(stream, np.zeros(shape))
    except MoecFormatError:
        return
    assert out.shape == tuple(shape) and out.dtype == np.int64
    assert np.abs(out).max(initial=0) < 2**correction_codec.MAX_CLASSES
    assert values.shape == tuple(shape) and values.dtype == np.dtype(dtype)
    assert stream.lo <= values.min() and values.max() <= stream.hi


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_fuzz_bit_flips_and_truncations_decode_or_raise_format_errors(sample, data):
    x, stream = sample
    if data.draw(st.booleans()):  # the same volume with anchored voxels
        y = x + np.random.default_rng(4).normal(0, 40, x.shape)
        unstable = np.zeros(x.shape, bool)
        unstable[1, 2, 3] = unstable[5, 7, 9] = unstable[8, 12, 10] = True
        stream = encode(x, y, 15.0, unstable=unstable, chunk=(4, 8, 8), version=stream[0])
    raw = bytearray(stream)
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(raw) - 1))
        raw[position] ^= 1 << data.draw(st.integers(0, 7))
    cut = data.draw(st.integers(0, 8))
    _decode_or_format_error(bytes(raw[: len(raw) - cut]), x.shape, x.dtype)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=st.binary(max_size=300))
def test_fuzz_random_bytes_decode_or_raise_format_errors(raw):
    _decode_or_format_error(raw, (9, 13, 11), np.uint16)


def test_a_version_1_stream_still_decodes_to_its_codes():
    """``tests/data/correction_v1.bin`` was written by the version-1 coder: later readers
    must decode it to the same codes and keep its bound (old files stay readable)."""
    from .data.make_correction_v1 import HERE, sample

    volume, prediction = sample()
    raw = (HERE / "correction_v1.bin").read_bytes()
    assert raw[0] == 1  # the stream's version byte
    stream = parse(raw, volume.shape, volume.dtype)
    np.testing.assert_array_equal(codes(stream), np.load(HERE / "correction_v1_codes.npy"))
    assert _error(apply(stream, prediction), volume) <= 12.0
    roi = ((0, 2), (3, 9), None, (2, 7))
    np.testing.assert_array_equal(codes(stream, roi, 2), codes(stream)[0:2:2, 3:9:2, ::2, 2:7:2])


def test_ties_at_both_ends_of_the_margin_are_anchored_in_one_retry():
    """Residuals a hair from a quantizer cell's edge miss at ``y - m`` for some voxels and at
    ``y + m`` for others: the writer must anchor both kinds at once (it had anchored only the
    first shift's misses, then refused the file: hipct at a 1 % bound)."""
    rng = np.random.default_rng(7)
    x = rng.integers(16633, 24071, (8, 16, 16)).astype(np.uint16)
    x.flat[[0, -1]] = 16633, 24070
    max_error = 74.37
    step, margin = plan_bound(max_error, x.dtype, (16633, 24070))
    k = rng.integers(-3, 4, x.shape)
    nudge = rng.choice([-margin, margin, 0.0, 1e-9, -1e-9], x.shape)
    y = x - (k + 0.5) * step + nudge
    stream = encode(x, y, max_error, chunk=(8, 16, 16))
    assert verify(x, y, stream, margin=margin) <= max_error
    assert parse(stream, x.shape, x.dtype).anchors.size > 0


def test_the_writer_keeps_the_smaller_version_and_both_decode_alike():
    """Version 2's in-plane contexts pay off where the residuals are spatially correlated (a
    network's errors are); its larger tables do not on a few scattered codes, where version 1
    is kept."""
    rng = np.random.default_rng(11)
    x = smooth_volume((24, 40, 40))
    dense = x + 300 * ndimage.gaussian_filter(rng.normal(0, 1, x.shape), 1.0)
    sparse = x + np.where(rng.random(x.shape) < 0.002, 400.0, 0.0)
    for y, kept in ((dense, 2), (sparse, 1)):
        streams = {v: encode(x, y, 30.0, version=v) for v in correction_codec.VERSIONS}
        chosen = encode(x, y, 30.0)
        assert chosen == streams[kept] and len(chosen) == min(map(len, streams.values()))
        decoded = [codes(parse(s, x.shape, x.dtype)) for s in streams.values()]
        np.testing.assert_array_equal(decoded[0], decoded[1])


def _absolute_chunks(raw: bytes, x: np.ndarray) -> np.ndarray:
    return parse(raw, x.shape, x.dtype).absolute


@pytest.mark.parametrize("dtype", [np.uint16, np.int16, np.float32])
def test_absolute_chunks_code_the_data_where_the_network_does_not_help(dtype):
    """Version 3: chunks whose prediction is useless (here: noise) code the data itself and
    keep the bound whatever a reader predicts there; chunks with a good prediction keep
    coding the residual. The writer picks per chunk."""
    x = smooth_volume((16, 32, 32), seed=3, dtype=dtype)
    rng = np.random.default_rng(5)
    y = x.astype(np.float64) + rng.normal(0, 0.002 * np.ptp(x), x.shape)
    y[:, :, 16:] = rng.uniform(x.min(), x.max(), (16, 32, 16))  # a useless prediction
    bound = 0.02 * float(np.ptp(x))
    raw = encode(x, y, bound, chunk=(16, 16, 16))
    assert raw[0] == 3
    np.testing.assert_array_equal(_absolute_chunks(raw, x), [False, True, False, True])
    stream = parse(raw, x.shape, x.dtype)
    assert verify(x, y, stream) <= bound
    # an absolute chunk ignores the prediction: any reader's values hold the bound there
    other = apply(stream, y + rng.normal(0, np.ptp(x), x.shape))
    assert _error(other[:, :, 16:], x[:, :, 16:]) <= bound
    roi = (None, (3, 29), (9, 30))
    whole = apply(stream, y)
    np.testing.assert_array_equal(apply(stream, y[:, 3:29, 9:30], roi), whole[:, 3:29, 9:30])
    strided = apply(stream, y[::2, 3:29:2, 9:30:2], roi, 2)
    np.testing.assert_array_equal(strided, whole[::2, 3:29:2, 9:30:2])


def test_absolute_chunks_in_4d_and_on_the_edges_of_the_integer_range():
    info = np.iinfo(np.uint16)
    x = smooth_volume((3, 9, 20, 20), seed=8)
    x[0, 0, 0, :2] = info.min, info.max
    y = np.full(x.shape, float(x.mean()))  # no information at all
    raw = encode(x, y, 120.0, chunk=(8, 8, 8))
    stream = parse(raw, x.shape, x.dtype)
    assert stream.version == 3 and stream.absolute.any()
    assert verify(x, y, stream) <= 120.0


def test_a_version_3_stream_smaller_than_version_2_where_the_prediction_is_poor():
    x = smooth_volume((24, 40, 40), seed=2)
    y = np.full(x.shape, float(x.min()))
    sizes = {v: len(encode(x, y, 40.0, version=v)) for v in correction_codec.VERSIONS}
    assert sizes[3] < 0.8 * min(sizes[1], sizes[2])


def test_an_absolute_code_outside_the_range_is_a_format_error():
    """A hostile stream whose absolute chunk's codes leave ``-top..top`` (no valid writer's
    do: the data lies in [lo, hi]) is refused, naming the chunk, before its values are used.
    Forged here by giving the writer values far outside the clip range."""
    rng = np.random.default_rng(0)
    q = rng.integers(-50, 50, (4, 8, 8))  # noise: the absolute coding is cheaper
    original = rng.uniform(0, 100, q.shape)
    original[2, 3, 4] = 9000.0  # the range [0, 100] at step 10 allows codes -11..11
    raw = correction_codec.encode_chunks(
        q, dtype=np.dtype(np.uint16), chunk=(4, 8, 8), max_error=5.0, step=10.0, lo=0.0,
        hi=100.0, anchors=np.zeros(0, np.int64), original=original, version=3,
    )  # fmt: skip
    stream = parse(raw, q.shape, np.uint16)
    assert stream.absolute.all()
    with pytest.raises(MoecFormatError, match="absolute code outside"):
        apply(stream, np.zeros(q.shape))
