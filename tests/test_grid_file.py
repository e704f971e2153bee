"""Whole ``.moec`` files of the grid family: the committed golden file (it must decode to the
same values forever, and today's writer must produce its bytes), and hostile files that reach
the grid payload through the frame (truncations, bit flips, mutations with the CRC fixed up,
wrong family names, out-of-range and huge config fields). Payload-level checks and fuzzing are
in ``test_grid_payload.py``."""

from __future__ import annotations

import hashlib
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import napari_moec as nm
from napari_moec.errors import MoecFormatError
from napari_moec.families.grid.config import FIELDS
from napari_moec.families.grid.payload import side_bytes, unpack_payload
from napari_moec.format import HEADER_DICT, MAGIC, unpack

from .data.make_golden_grid import SHAPE, arrays_digest, golden_config, golden_grid_file

DATA = Path(__file__).parent / "data"
GOLDEN = DATA / "golden_grid_v1.moec"
FILE_SHA, ARRAYS_SHA = (
    line.split()[0] for line in (DATA / "golden_grid_v1.sha256").read_text().splitlines()
)


@pytest.fixture(scope="module")
def golden() -> bytes:
    return GOLDEN.read_bytes()


def test_committed_file_is_the_pinned_one(golden):
    assert hashlib.sha256(golden).hexdigest() == FILE_SHA


def test_golden_file_decodes_to_pinned_values(golden):
    header, weights = unpack(golden)
    assert header.family == "grid" and header.model == golden_config()
    assert (header.shape, header.dtype, header.spacing) == (SHAPE, "uint16", (2.0, 0.5, 0.5))
    assert arrays_digest(weights) == ARRAYS_SHA  # integers x float16 steps: exact
    compressed = nm.load(GOLDEN)
    values, labels = compressed.decode_with_labels()
    reference = np.load(DATA / "golden_grid_v1_decoded.npy")
    assert values.dtype == reference.dtype == np.uint16 and values.shape == SHAPE
    diff = np.abs(values.astype(np.int64) - reference.astype(np.int64))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01  # float kernels: a level, rarely
    assert np.unique(reference).size > 100  # the pinned volume is not a saturated constant
    counts = np.bincount(labels.ravel(), minlength=2)
    assert abs(int(counts[0]) - 682) <= 17 and counts.sum() == values.size  # 1%: near-ties


def test_golden_region_decode_equals_the_slice(golden):
    compressed = nm.load(GOLDEN)
    full = compressed.decode()
    roi = (slice(3, 11), slice(2, 13), slice(1, 9))
    np.testing.assert_array_equal(compressed.decode(roi=roi), full[roi])
    np.testing.assert_array_equal(compressed.decode(stride=2), full[::2, ::2, ::2])


def test_todays_writer_gives_the_golden_bytes(golden):
    """A change of the grid payload or its header that would break old files moves these
    bytes: say so, keep the old reader path, never regenerate the golden file."""
    assert golden_grid_file() == golden


def test_coarse_context_golden_file(golden):
    """The golden integers coded with the coarse contexts (context 3, "cbc"): a pinned file
    that today's writer reproduces, whose arrays are the checkerboard golden's to the bit
    (the same integers, coded otherwise) in fewer bytes, decoding to the same voxels."""
    data = (DATA / "golden_grid_cbc_v1.moec").read_bytes()
    file_sha, arrays_sha = (
        line.split()[0] for line in (DATA / "golden_grid_cbc_v1.sha256").read_text().splitlines()
    )
    assert hashlib.sha256(data).hexdigest() == file_sha
    assert golden_grid_file("cbc") == data
    header, weights = unpack(data)
    assert header.model == golden_config("cbc") and header.model.context == "cbc"
    assert arrays_digest(weights) == arrays_sha == ARRAYS_SHA
    assert len(data) < len(golden)
    values = nm.load(DATA / "golden_grid_cbc_v1.moec").decode()
    reference = np.load(DATA / "golden_grid_v1_decoded.npy")
    assert np.abs(values.astype(np.int64) - reference.astype(np.int64)).max() <= 1
    pinned = np.load(DATA / "golden_grid_cbc_v1_decoded.npy").astype(np.int64)
    assert np.abs(values.astype(np.int64) - pinned).max() <= 1  # float kernels: a level


# -- hostile files -----------------------------------------------------------------------------


def _split(data: bytes) -> tuple[dict, bytes]:
    (hlen,) = struct.unpack_from("<H", data, 10)
    text = zlib.decompressobj(-15, HEADER_DICT).decompress(data[12 : 12 + hlen])
    return json.loads(text), data[12 + hlen : -4]


def _file(doc: dict, payload: bytes) -> bytes:
    comp = zlib.compressobj(9, zlib.DEFLATED, -15, 9, zlib.Z_DEFAULT_STRATEGY, HEADER_DICT)
    head = comp.compress(json.dumps(doc, sort_keys=True).encode()) + comp.flush()
    body = MAGIC + b"\x01\x00" + struct.pack("<H", len(head)) + head + payload
    return body + struct.pack("<I", zlib.crc32(body))


def test_reframed_golden_is_read(golden):
    doc, payload = _split(golden)
    assert unpack(_file(doc, payload))[0] == unpack(golden)[0]  # the helpers are faithful


def test_every_truncation_and_bit_flip_raises(golden):
    for n in range(len(golden)):
        with pytest.raises(MoecFormatError):
            unpack(golden[:n])
    for i in range(len(golden)):
        data = bytearray(golden)
        data[i] ^= 1 << (i % 8)
        with pytest.raises(MoecFormatError):
            unpack(bytes(data))


def test_payload_truncations_behind_a_valid_crc(golden):
    """With the CRC recomputed (a hostile file, not a damaged one: the CRC catches those),
    a cut into the side bytes or off the 4-byte word grid is refused; a cut of whole ANS
    words cannot be told from a shorter stream (no redundancy to check) and must still give
    arrays of the config's shapes with every integer within the stored radius."""
    doc, payload = _split(golden)
    cfg = golden_config()
    side = side_bytes(cfg)
    (radius,) = struct.unpack_from("<H", payload, side - 2)
    refused = 0
    for n in range(len(payload)):
        try:
            out = unpack_payload(payload[:n], cfg)
        except MoecFormatError:
            refused += 1
            with pytest.raises(MoecFormatError):
                unpack(_file(doc, payload[:n]))
            continue
        assert n >= side and (n - side) % 4 == 0, n
        for q, g in zip(out.latents, cfg.grid_shapes, strict=True):
            assert q.shape == g and np.abs(q).max(initial=0) <= radius
        unpack(_file(doc, payload[:n]))
    assert refused >= len(payload) * 3 // 4
    for extra in (b"\0", b"\0" * 4, b"\x01\0\0\0"):
        with pytest.raises(MoecFormatError):
            unpack(_file(doc, payload + extra))


def test_wrong_family_name(golden):
    doc, payload = _split(golden)
    siren_doc = {k: v for k, v in doc.items() if k != "f"}
    for bad in (doc | {"f": "siren"}, siren_doc, doc | {"f": "gird"}, doc | {"f": ["grid"]}):
        with pytest.raises(MoecFormatError):
            unpack(_file(bad, payload))  # the 9-integer "m" is no SIREN model, and vice versa
    siren = (DATA / "golden_v1.moec").read_bytes()
    siren_doc, siren_payload = _split(siren)
    with pytest.raises(MoecFormatError, match="grid model"):
        unpack(_file(siren_doc | {"f": "grid"}, siren_payload))


@pytest.mark.parametrize("index", range(len(FIELDS)))
def test_config_fields_out_of_range(golden, index):
    doc, payload = _split(golden)
    name, lo, hi = FIELDS[index]
    for value in (lo - 1, hi + 1, 1 << 62, -(1 << 62), 2.5, "1", None, True):
        m = list(doc["m"])
        m[index] = value
        with pytest.raises(MoecFormatError, match="grid model"):
            unpack(_file(doc | {"m": m}, payload))
            pytest.fail(f"{name}={value!r} accepted")


@pytest.mark.parametrize(
    ("m", "shape"),
    [
        ([1, 0, 1, 6, 2, 1, 2, 8, 1], [1 << 24, 1 << 8, 1 << 8]),  # 2^40 latents at level 0
        ([12, 0, 1, 128, 16, 16, 4, 64, 1], [4096, 4096, 64]),  # every count at its maximum
    ],
)
def test_huge_counts_refused_before_allocation(golden, m, shape):
    doc, payload = _split(golden)
    with pytest.raises(MoecFormatError, match="latents"):
        unpack(_file(doc | {"m": m, "s": shape}, payload))  # from "m" and "s" alone


def test_in_range_config_with_the_wrong_payload_raises(golden):
    doc, payload = _split(golden)
    for change in ({"m": [*doc["m"][:3], 128, *doc["m"][4:]]}, {"s": [12, 14, 11]}):
        with pytest.raises(MoecFormatError):
            unpack(_file(doc | change, payload))


GOLDEN_BYTES = GOLDEN.read_bytes()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_fuzz_mutated_grid_files(data):
    """Mutations with the CRC fixed up, so they reach the grid header and payload checks:
    refused with MoecFormatError, or read as finite arrays of the config's shapes."""
    body = bytearray(GOLDEN_BYTES[:-4])
    for _ in range(data.draw(st.integers(1, 8))):
        i = data.draw(st.integers(12, len(body) - 1))
        body[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(12, len(body)))
    raw = bytes(body[:cut]) + data.draw(st.binary(max_size=16))
    try:
        header, weights = unpack(raw + struct.pack("<I", zlib.crc32(raw)))
    except MoecFormatError:
        return
    assert header.family == "grid"
    for value in weights.values():
        assert np.isfinite(value).all()
