"""The .moec reader must accept exactly what the writer produced and reject everything else
with MoecFormatError: never another exception, a hang, or a huge allocation."""

import json
import struct
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import napari_moec as nm
from napari_moec import entropy
from napari_moec.config import ModelConfig, QuantConfig
from napari_moec.errors import MoecFormatError, UnsupportedVersionError
from napari_moec.families.siren.moe import MoESiren
from napari_moec.format import (
    HEADER_DICT,
    MAGIC,
    Header,
    TrainingSummary,
    pack,
    parameter_layout,
    unpack,
)

GOLDEN = Path(__file__).parent / "data" / "golden_v1.moec"


def make_header(**changes) -> Header:
    base = Header(
        shape=(5, 6, 7),
        axes="ZYX",
        dtype="uint16",
        vmin=10.0,
        vmax=4000.5,
        model=ModelConfig(
            hidden_features=6,
            num_experts=3,
            top_k=2,
            expert_layers=2,
            gate_hidden=4,
            w0=25.5,
            w0_first=31.0,
        ),
        quant=QuantConfig("int8", per_channel=True),
        norm=(-1.0, 1.0),
        spacing=(1.5, 0.25, 0.25),
        unit="um",
        train=TrainingSummary(steps=300, psnr=31.25, seconds=12.5, device="cpu"),
    )
    return replace(base, **changes)


def state_for(header: Header, seed=0):
    torch.manual_seed(seed)
    return MoESiren(header.model).layout_state()


@pytest.fixture(scope="module")
def valid_file() -> bytes:
    header = make_header()
    return pack(header, state_for(header))


@pytest.mark.parametrize(
    "quant",
    [
        QuantConfig("fp32"),
        QuantConfig("fp16"),
        QuantConfig("int8"),
        QuantConfig("int8", per_channel=True),
        QuantConfig("int6"),
        QuantConfig("int4"),
        QuantConfig("int8", entropy=False),
    ],
)
def test_every_field_round_trips(quant):
    header = make_header(quant=quant)
    state = state_for(header)
    got_header, weights = unpack(pack(header, state))
    assert got_header == header
    for name, value in state.items():
        tol = {"fp32": 0, "fp16": 1e-3}.get(quant.precision)
        if tol is not None:
            torch.testing.assert_close(weights[name], value, atol=tol, rtol=tol)
        else:  # quantized: within half a step of the tensor's scale
            step = value.abs().max() / (2 ** (quant.bits - 1) - 1)
            assert (weights[name] - value).abs().max() <= 0.5 * step * 1.01 + 1e-6


def test_optional_fields_round_trip():
    header = make_header(spacing=None, unit=None, train=None, axes="ZYX")
    assert unpack(pack(header, state_for(header)))[0] == header


def test_writer_is_deterministic(valid_file):
    header = make_header()
    assert pack(header, state_for(header)) == valid_file


@pytest.mark.parametrize("experts", [1, 3])
def test_parameter_layout_is_the_spec_and_the_network_follows_it(experts):
    """The stored tensors are the format's table, not the network's attribute names: the
    network maps every parameter to exactly one layout entry of the same shape."""
    model = ModelConfig(hidden_features=6, num_experts=experts, expert_layers=2, gate_hidden=4)
    layout = parameter_layout(model)
    net = MoESiren(model)
    params = net.layout_parameters()
    assert [name for name, _ in layout] == list(params)
    assert [shape for _, shape in layout] == [tuple(p.shape) for p in params.values()]
    assert {id(p) for p in params.values()} == {id(p) for p in net.parameters()}
    expected_head = ["encoder.weight", "encoder.bias"]
    if experts > 1:
        expected_head += [f"gate.{i}.{k}" for i in range(3) for k in ("weight", "bias")]
    assert [name for name, _ in layout][: len(expected_head)] == expected_head
    assert [name for name, _ in layout][-2:] == ["decoder.weight", "decoder.bias"]


@pytest.mark.parametrize(
    "summary",
    [
        {"steps": 1},
        {"steps": "x", "psnr": 1, "seconds": 1, "device": "cpu"},
        [1, 2],
        {"steps": 1, "psnr": 1, "seconds": float("nan"), "device": "cpu"},
    ],
)
def test_hostile_training_summary(valid_file, summary):
    doc = valid_doc() | {"t": summary}
    text = json.dumps(doc, allow_nan=True)
    comp = zlib.compressobj(9, zlib.DEFLATED, -15, 9, zlib.Z_DEFAULT_STRATEGY, HEADER_DICT)
    head = comp.compress(text.encode()) + comp.flush()
    data = recrc(MAGIC + b"\x01\x00" + struct.pack("<H", len(head)) + head + b"\0" * 64)
    with pytest.raises(MoecFormatError, match="training"):
        unpack(data)


def test_header_is_compact(valid_file):
    (hlen,) = struct.unpack_from("<H", valid_file, 10)
    assert hlen < 150  # measured ~100 bytes with spacing, unit and training summary


def test_info_does_not_decode_weights(valid_file):
    header, weights = unpack(valid_file, decode_weights=False)
    assert weights is None and header.shape == (5, 6, 7)


def recrc(body: bytes) -> bytes:
    return body + struct.pack("<I", zlib.crc32(body))


def with_header(doc: dict, payload: bytes = b"", major=1, minor=0) -> bytes:
    comp = zlib.compressobj(9, zlib.DEFLATED, -15, 9, zlib.Z_DEFAULT_STRATEGY, HEADER_DICT)
    head = comp.compress(json.dumps(doc).encode()) + comp.flush()
    return recrc(MAGIC + bytes([major, minor]) + struct.pack("<H", len(head)) + head + payload)


def valid_doc():
    return make_header().to_json()


def test_truncated_anywhere_raises(valid_file):
    for n in range(len(valid_file)):
        with pytest.raises(MoecFormatError):
            unpack(valid_file[:n])


def test_every_single_bit_flip_raises(valid_file):
    for i in range(len(valid_file)):
        for bit in (0, 3, 7):
            data = bytearray(valid_file)
            data[i] ^= 1 << bit
            with pytest.raises(MoecFormatError):
                unpack(bytes(data))


def test_wrong_magic_and_future_major(valid_file):
    with pytest.raises(MoecFormatError, match="magic"):
        unpack(b"\x89PNG\r\n\x1a\n" + valid_file[8:])
    future = recrc(valid_file[:8] + bytes([2, 0]) + valid_file[10:-4])
    with pytest.raises(UnsupportedVersionError, match=r"2\.0"):
        unpack(future)


def test_newer_minor_with_unknown_optional_key_is_read(valid_file):
    doc = valid_doc() | {"zz": 1}
    _, _, _, hlen = struct.unpack_from("<8sBBH", valid_file)
    payload = valid_file[12 + hlen : -4]
    header, _ = unpack(with_header(doc, payload, minor=1))
    assert header == make_header()
    with pytest.raises(MoecFormatError, match="unknown keys"):
        unpack(with_header(doc, payload, minor=0))


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"s": [1 << 30, 1, 1]}, "shape"),
        ({"s": [1 << 24, 1 << 24, 1 << 24]}, "too large"),
        ({"m": [3, 4096, 64, 2, 32, 4096, 1, 30, 30]}, "parameters"),
        ({"m": [3, 6, 3, 2, 2, 4, 1, "x", 30]}, "frequencies"),
        ({"d": "float64"}, "dtype"),
        ({"r": [5, 1]}, "range"),
        ({"r": [0, float("inf")]}, "range"),
        ({"a": "ZZX"}, "axes"),
        ({"q": ["int3", 0, 1]}, "quantization"),
        ({"sp": [1, -1, 1]}, "spacing"),
        ({"s": "abc"}, "shape"),
        ({"f": "wavelet"}, "unknown model family"),
        ({"f": 3}, "model family"),
    ],
)
def test_hostile_header_fields(valid_file, change, match):
    doc = valid_doc() | change
    text = json.dumps(doc, allow_nan=True)
    comp = zlib.compressobj(9, zlib.DEFLATED, -15, 9, zlib.Z_DEFAULT_STRATEGY, HEADER_DICT)
    head = comp.compress(text.encode()) + comp.flush()
    data = recrc(MAGIC + b"\x01\x00" + struct.pack("<H", len(head)) + head + b"\0" * 64)
    with pytest.raises(MoecFormatError, match=match):
        unpack(data)


def test_siren_files_name_no_family_and_read_as_siren(valid_file):
    """The family field is written only for other families: SIREN files keep the bytes of
    format 1.0, and a file without it is read as SIREN (issue 21)."""
    assert "f" not in valid_doc()
    header, _ = unpack(valid_file)
    assert header.family == "siren"
    _, _, _, hlen = struct.unpack_from("<8sBBH", valid_file)
    payload = valid_file[12 + hlen : -4]
    named, _ = unpack(with_header(valid_doc() | {"f": "siren"}, payload))
    assert named == header


def test_header_zip_bomb_and_bad_json():
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    bomb = comp.compress(b" " * 3_000_000) + comp.flush()
    assert len(bomb) < 4096
    data = recrc(MAGIC + b"\x01\x00" + struct.pack("<H", len(bomb)) + bomb)
    with pytest.raises(MoecFormatError, match="bounded"):
        unpack(data)
    for doc in ([1, 2], "x", None):
        with pytest.raises(MoecFormatError):
            unpack(with_header(doc))


def test_payload_length_must_match_model(valid_file):
    header = make_header(quant=QuantConfig("fp16"))
    data = pack(header, state_for(header))
    with pytest.raises(MoecFormatError, match="payload"):
        unpack(recrc(data[:-6]))  # two bytes short, CRC fixed up
    with pytest.raises(MoecFormatError, match="payload"):
        unpack(recrc(data[:-4] + b"\0\0"))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_fuzz_mutated_files_only_raise_format_error(valid_file, data):
    """Mutations with the CRC fixed up, so they reach the header and payload checks."""
    body = bytearray(valid_file[:-4])
    for _ in range(data.draw(st.integers(1, 8))):
        i = data.draw(st.integers(0, len(body) - 1))
        body[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(body)))
    mutated = recrc(bytes(body[:cut]) + data.draw(st.binary(max_size=16)))
    try:
        _, weights = unpack(mutated)
    except MoecFormatError:
        return
    for value in weights.values():  # accepted files hold finite weights of the right shape
        assert torch.isfinite(value).all()


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_random_bytes(raw):
    with pytest.raises(MoecFormatError):
        unpack(MAGIC + raw)


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.lists(st.integers(-127, 127), max_size=60), min_size=1, max_size=4),
    st.booleans(),
)
def test_entropy_coder_round_trips(tensors, use_models):
    arrays = [np.array(t, dtype=np.int32) for t in tensors]
    models = [entropy.choose_model(a, 127) if use_models and a.size else 0 for a in arrays]
    coded = entropy.encode(arrays, models, 127)
    decoded = entropy.decode(coded, [a.size for a in arrays], models, 127)
    for a, b in zip(arrays, decoded, strict=True):
        np.testing.assert_array_equal(a, b)


def _fewest_bits_model(q: np.ndarray, radius: int) -> tuple[int, float]:
    """Reference: every model byte scored one by one; returns (model, bits)."""
    symbols = q.ravel().astype(np.int64) + radius
    counts = np.bincount(symbols, minlength=2 * radius + 1)
    used = counts > 0
    best = (0, float(symbols.size * np.log2(2 * radius + 1)))
    for model in range(1, 255):
        bits = float(-(counts[used] * np.log2(entropy.model_table(model, radius)[used])).sum())
        if bits < best[1]:
            best = (model, bits)
    return best


@settings(max_examples=40, deadline=None)
@given(
    st.sampled_from([1, 5, 127, 2000]),
    st.floats(0.05, 3000),
    st.sampled_from(["laplace", "normal", "uniform"]),
    st.integers(0, 2**32 - 1),
)
def test_entropy_model_choice_is_near_the_best_of_all_models(radius, spread, kind, seed):
    """The encoder searches a window of model bytes around the data's RMS; the window must hold
    the best model (or one within 0.5% of its bits) for Laplace-, Gaussian- and uniform-like
    integers at any spread."""
    rng = np.random.default_rng(seed)
    low = -spread if kind == "uniform" else 0.0
    x = getattr(rng, kind)(low, spread, 400)
    q = np.clip(np.round(x), -radius, radius).astype(np.int32)
    chosen = entropy.choose_model(q, radius)
    symbols = q.astype(np.int64) + radius
    if chosen == 0:
        chosen_bits = symbols.size * np.log2(2 * radius + 1)
    else:
        table = entropy.model_table(chosen, radius)
        chosen_bits = float(-np.log2(table[symbols]).sum())
    _, best_bits = _fewest_bits_model(q, radius)
    assert chosen_bits <= best_bits * 1.005 + 1e-9


def test_entropy_model_tables_are_shared_and_read_only():
    for model in (0, 40, 200):
        table = entropy.model_table(model, 127)
        assert table is entropy.model_table(model, 127)  # cached: rate control reuses it
        with pytest.raises(ValueError):
            table[0] = 1.0


def test_entropy_coding_beats_fixed_length_on_peaked_weights():
    rng = np.random.default_rng(0)
    q = np.clip(np.round(rng.laplace(0, 4, 5000)), -127, 127).astype(np.int32)
    model = entropy.choose_model(q, 127)
    assert model != 0
    coded = len(entropy.encode([q], [model], 127))
    plain = len(entropy.encode([q], [0], 127))
    assert coded < 0.65 * plain


def test_golden_file_decodes_to_known_volume():
    """A committed v1.0 file must decode forever to the same weights and voxels."""
    from .data.make_golden import weights_digest

    compressed = nm.load(GOLDEN)
    assert compressed.header.shape == (12, 12, 12)
    assert compressed.header.spacing == (2.0, 1.0, 1.0)
    expected = (GOLDEN.parent / "golden_v1.sha256").read_text().split()[0]
    assert weights_digest(compressed) == expected  # exact
    reference = np.load(GOLDEN.parent / "golden_v1_decoded.npy")
    decoded = compressed.decode()
    assert decoded.dtype == reference.dtype
    # Float kernels may round the last bit differently: at most one level, rarely.
    diff = np.abs(decoded.astype(np.int64) - reference.astype(np.int64))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01


def test_load_rejects_non_moec(tmp_path):
    path = tmp_path / "x.moec"
    path.write_bytes(b"hello world")
    with pytest.raises(MoecFormatError, match="magic"):
        nm.load(path)
