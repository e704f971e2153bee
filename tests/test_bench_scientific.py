"""The budget rule of the scientific codecs of the benchmarks (``benchmarks/scientific.py``).

The rate–distortion tables compare napari-moec with SZ3, ZFP, SPERR and TTHRESH at equal
bytes; these tests pin what "equal bytes" means there: every byte a codec emits fits the
budget, the best-quality fitting candidate is the one reported, decoded values are what a user
gets back in the original dtype, and a budget nothing fits is reported as such. The tuning
rule is tested with a fake codec (no package needed); the real codecs, where their packages
(the ``bench`` extra) are installed.
"""

from __future__ import annotations

import importlib.util
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import smooth_volume

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load_scientific():
    name = "moec_benchmark_scientific"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, BENCHMARKS / "scientific.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


scientific = _load_scientific()


class FakeCodec:
    """Quantizes to a step of ``2**-t``; ``size(t)`` bytes, the knob in the first 8."""

    def __init__(self, vol: np.ndarray, size, exact_at: float | None = None):
        self.vol, self.size, self.exact_at = vol.astype(np.float64), size, exact_at
        self.tried: list[float] = []

    def encode(self, t: float) -> bytes:
        self.tried.append(t)
        n = self.size(t)
        return struct.pack("<d", t) + bytes(n - 8)

    def decode(self, buffer: bytes) -> np.ndarray:
        (t,) = struct.unpack("<d", buffer[:8])
        if self.exact_at is not None and t == self.exact_at:
            return self.vol
        step = 2.0**-t * 1000.0
        return np.round(self.vol / step) * step + 0.3 * step


def _size(t: float) -> int:
    """100 bytes per unit of t from t = 2; below it a 10 kB fallback (as TTHRESH has)."""
    return 10_000 if t < 2 else 8 + int(100 * t)


def test_tune_picks_the_best_quality_whose_every_byte_fits():
    vol = smooth_volume((8, 8, 8))
    codec = FakeCodec(vol, _size)
    found = scientific.tune(vol, 558, codec.encode, codec.decode, range(11), refine=8)
    assert found is not None
    assert found.nbytes <= 558
    assert found.nbytes == len(codec.encode(found.knob))
    # bisected between grid points 5 (fits) and 6 (does not) to within 1/256: the budget is
    # filled (8 + int(100 t) = 558 for t in [5.5, 5.51))
    assert found.nbytes == 558
    assert 5.5 - 1 / 256 <= found.knob < 5.51
    assert found.recon.dtype == vol.dtype and found.recon.shape == vol.shape
    # the scan went on past the non-fitting low end (t = 0, 1) and stopped after t = 6
    assert {0.0, 1.0, 2.0, 6.0} <= set(codec.tried) and 7.0 not in codec.tried


def test_tune_reports_the_lowest_error_of_the_fitting_candidates():
    vol = smooth_volume((8, 8, 8))
    codec = FakeCodec(vol, _size, exact_at=3.0)  # t = 3 decodes exactly, finer t does not
    found = scientific.tune(vol, 558, codec.encode, codec.decode, range(11))
    assert found.knob == 3.0 and found.mse == 0.0
    assert np.array_equal(found.recon, vol)


def test_tune_returns_none_when_nothing_fits():
    vol = smooth_volume((8, 8, 8))
    codec = FakeCodec(vol, _size)
    assert scientific.tune(vol, 207, codec.encode, codec.decode, range(11)) is None


def test_decoded_values_are_rounded_and_clipped_to_the_dtype():
    values = np.array([-3.2, 0.4, 0.6, 65534.7, 70000.0])
    out = scientific.to_dtype(values, np.uint16)
    assert out.dtype == np.uint16
    assert out.tolist() == [0, 0, 1, 65535, 65535]
    floats = scientific.to_dtype(values, np.float32)
    assert floats.dtype == np.float32 and floats[0] == np.float32(-3.2)


def test_integers_wider_than_float32_are_refused():
    with pytest.raises(TypeError, match="float32"):
        scientific._coded(np.zeros((4, 4, 4), np.int32))


CODEC_PACKAGES = {
    "sz3": "pysz",
    "zfp": "zfpy",
    "sperr": "imagecodecs",
    "tthresh": "numcodecs_wasm_tthresh",
}


@pytest.mark.parametrize("shape", [(16, 16, 16), (2, 16, 16, 16)], ids=["3d", "4d"])
@pytest.mark.parametrize("method", list(CODEC_PACKAGES))
def test_real_codec_fits_the_budget_and_more_bytes_do_no_worse(method, shape):
    pytest.importorskip(CODEC_PACKAGES[method])
    from napari_moec.metrics import psnr

    vol = smooth_volume(shape)
    codec = scientific.METHODS[method]
    results = []
    for ratio in (8, 2):
        budget = vol.nbytes // ratio
        found = codec(vol, budget)
        assert found is not None, f"{method} found nothing in {budget} B"
        nbytes, recon = found
        assert 0 < nbytes <= budget
        assert recon.dtype == vol.dtype and recon.shape == vol.shape
        results.append(psnr(vol, recon))
    assert results[1] >= results[0] - 0.1, results
    assert codec(vol, 4) is None  # no codec's header fits in 4 bytes


def test_sperr_splits_a_4d_budget_equally():
    pytest.importorskip("imagecodecs")
    vol = smooth_volume((2, 16, 16, 16))
    budget = vol.nbytes // 16
    nbytes, recon = scientific.sperr(vol, budget)
    per_volume = [scientific.sperr(v, budget // 2) for v in vol]
    assert nbytes == sum(p[0] for p in per_volume) <= budget
    assert np.array_equal(recon, np.stack([p[1] for p in per_volume]))


def test_tune_gives_up_once_the_bytes_grow_far_past_the_budget():
    vol = smooth_volume((8, 8, 8))
    codec = FakeCodec(vol, _size)  # t = 2: 208 B, 3: 308, 4: 408 > 4 x 100 and growing
    assert scientific.tune(vol, 100, codec.encode, codec.decode, range(11)) is None
    assert codec.tried == [0.0, 1.0, 2.0, 3.0, 4.0]


def test_a_stream_that_does_not_decode_is_no_result():
    vol = smooth_volume((8, 8, 8))
    codec = FakeCodec(vol, _size)

    def decode(buffer: bytes) -> np.ndarray:
        if struct.unpack("<d", buffer[:8])[0] >= 4:
            raise RuntimeError("trap")
        return codec.decode(buffer)

    found = scientific.tune(vol, 558, codec.encode, decode, range(11), undecodable=(RuntimeError,))
    assert found is not None and found.knob < 4  # the scan stopped at the first failure
    with pytest.raises(RuntimeError):  # not caught unless asked
        scientific.tune(vol, 558, codec.encode, decode, range(11))
