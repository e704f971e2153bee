"""The grid family's payload bytes: round trip, checks, hostile input and fuzzing."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from napari_moec.errors import ConfigError, MoecFormatError
from napari_moec.families.grid.codec import CODEC
from napari_moec.families.grid.config import MAX_LATENTS, GridConfig, level_shapes, mlp_layout
from napari_moec.families.grid.context import (
    CB_EDGES,
    coarse_buckets,
    coarse_slots,
    context_slots,
    even_mask,
)
from napari_moec.families.grid.payload import (
    GridPayload,
    pack_payload,
    side_bytes,
    unpack_payload,
)

SHAPE = (9, 14, 11)


def _random_payload(cfg: GridConfig, seed: int = 0) -> tuple[bytes, list, list]:
    rng = np.random.default_rng(seed)
    latents = [
        (rng.normal(size=g) * 3 * (rng.random(g) < 0.4)).round().astype(np.int32)
        for g in cfg.grid_shapes
    ]
    weights = [rng.integers(-127, 128, size=s).astype(np.int32) for _, s in mlp_layout(cfg)]
    scales = [0.015625] * len(weights)
    return pack_payload(cfg, latents, weights, scales, 0.5), latents, weights


@pytest.mark.parametrize(
    ("shape", "kw"),
    [
        ((21, 30, 17), {"num_experts": 3, "top_k": 2, "num_levels": 4}),
        ((3, 25, 41, 33), {"num_experts": 2, "num_levels": 5, "first_level": 0}),
        ((40, 33, 9), {"kernel": "linear", "context": "none"}),
        ((1, 5, 7), {"num_levels": 2}),
        ((21, 30, 17), {"num_levels": 3, "first_level": 0, "context": "lin"}),
        ((3, 25, 41, 33), {"num_experts": 2, "num_levels": 4, "context": "lin"}),
        ((1, 5, 7), {"num_levels": 2, "context": "lin"}),  # no level is large enough
        ((21, 30, 17), {"num_levels": 4, "first_level": 0, "context": "cbc"}),
        ((3, 25, 41, 33), {"num_experts": 2, "num_levels": 4, "context": "cbc"}),
        ((1, 5, 7), {"num_levels": 2, "context": "cbc"}),  # no level is large enough
        ((21, 30, 17), {"expert_layers": 1, "hidden": 2, "num_levels": 2}),  # the leanest
        ((21, 30, 17), {"expert_layers": 1, "num_experts": 2}),
    ],
)
def test_round_trip_exact(shape, kw):
    cfg = GridConfig(shape, **kw)
    data, latents, weights = _random_payload(cfg)
    assert len(data) > side_bytes(cfg)
    out = unpack_payload(data, cfg)
    assert isinstance(out, GridPayload) and out.config == cfg
    assert out.latent_step == 0.5 and set(out.scales) == {0.015625}
    for a, b in zip(out.latents, latents, strict=True):
        assert a.dtype == np.int32 and np.array_equal(a, b)
    for a, b in zip(out.weights, weights, strict=True):
        assert np.array_equal(a, b)
    values = out.latent_values()
    assert np.array_equal(values[0], latents[0].astype(np.float32) * 0.5)


def test_every_axis_is_downsampled():
    # The 4D EPI's T=3 axis gets 2 nodes at level 1 like any other axis (REPORT.md 9).
    assert level_shapes((3, 25, 41, 33), 2, 1) == [(2, 13, 21, 17), (2, 7, 11, 9)]
    assert level_shapes((3, 25, 41, 33), 1, 0) == [(3, 25, 41, 33)]


def test_context_numpy_equals_torch():
    import torch

    rng = np.random.default_rng(1)
    q = rng.integers(-4, 5, size=(7, 10, 9))
    even = even_mask(q.shape)
    a = context_slots(np.abs(q), even)
    b = context_slots(torch.from_numpy(q).abs().float(), torch.from_numpy(even.copy()))
    assert np.array_equal(a, b.numpy())
    assert set(np.unique(a[even])) == {0} and a[~even].min() >= 1


@pytest.mark.parametrize(
    ("fine", "coarse"), [((7, 10, 9), (4, 6, 5)), ((3, 9, 8, 6), (2, 5, 4, 3))]
)
def test_coarse_buckets_sum_the_coarser_nodes_around_each_node(fine, coarse):
    """``"cbc"``: an even latent's bucket is that of ``sum |q|`` over the 2^ndim coarser
    nodes around it (fine node i between coarse floor(i (m-1)/(n-1)) and the next, clamped),
    the same in numpy and torch; odd latents keep the checkerboard's slots, moved up by 4."""
    import itertools

    import torch

    rng = np.random.default_rng(2)
    c = rng.integers(-3, 4, size=coarse)
    total = np.zeros(fine, np.int64)
    for node in itertools.product(*map(range, fine)):
        pairs = []
        for i, n, m in zip(node, fine, coarse, strict=True):
            lo = (i * (m - 1)) // (n - 1)
            pairs.append((lo, min(lo + 1, m - 1)))
        total[node] = sum(abs(int(c[corner])) for corner in itertools.product(*pairs))
    expected = np.digitize(total, CB_EDGES)
    assert np.array_equal(coarse_buckets(fine, np.abs(c)), expected)
    as_torch = coarse_buckets(fine, torch.from_numpy(np.abs(c)).float())
    assert np.array_equal(as_torch.numpy(), expected)
    q = rng.integers(-4, 5, size=fine)
    even = even_mask(fine)
    slots = coarse_slots(np.abs(q), even, np.abs(c))
    assert np.array_equal(slots[even], expected[even])
    assert np.array_equal(slots[~even], context_slots(np.abs(q), even)[~even] + 4)
    torch_slots = coarse_slots(
        torch.from_numpy(np.abs(q)).float(),
        torch.from_numpy(even.copy()),
        torch.from_numpy(np.abs(c)).float(),
    )
    assert np.array_equal(torch_slots.numpy(), slots)


def test_coarse_context_codes_a_quiet_background_for_less():
    """Where a coarser level is zero its finer level's even latents are zero too (a
    volume's background), and busy elsewhere: ``"cbc"`` codes them in fewer bytes than
    ``"cb"``, whose even latents share one model; the levels decode exactly."""
    rng = np.random.default_rng(4)
    shape = (40, 48, 44)
    payloads = {}
    for context in ("cb", "cbc"):
        cfg = GridConfig(shape, num_levels=3, first_level=0, hidden=4, context=context)
        latents = []
        for g in cfg.grid_shapes:
            busy = np.zeros(g, bool)
            busy[: g[0] // 2] = True  # the same half of the volume on every level
            latents.append((rng.normal(size=g) * 4 * busy).round().astype(np.int32))
        weights = [np.zeros(s, np.int32) for _, s in mlp_layout(cfg)]
        data = pack_payload(cfg, latents, weights, [1.0] * len(weights))
        out = unpack_payload(data, cfg)
        assert all(np.array_equal(a, b) for a, b in zip(out.latents, latents, strict=True))
        payloads[context] = len(data)
        rng = np.random.default_rng(4)  # the same latents for both
    assert payloads["cbc"] < 0.95 * payloads["cb"], payloads


def test_config_json_checked():
    cfg = GridConfig(SHAPE, num_experts=2)
    assert CODEC.config_from_json(CODEC.config_to_json(cfg), SHAPE) == cfg
    for bad in (None, [1] * 8, [*cfg.to_json()[:-1], 4], [True, *cfg.to_json()[1:]], [1.0] * 9):
        with pytest.raises(MoecFormatError):
            CODEC.config_from_json(bad, SHAPE)
    with pytest.raises(ConfigError):
        GridConfig(SHAPE, top_k=2)
    with pytest.raises(ConfigError):
        GridConfig((4, 4))
    with pytest.raises(ConfigError):
        GridConfig((1 << 12,) * 3, first_level=0)  # too many latents


def _corrupt(data: bytes, offset: int, value: bytes) -> bytes:
    return data[:offset] + value + data[offset + len(value) :]


def test_hostile_payloads_raise_format_error():
    cfg = GridConfig(SHAPE, num_levels=3, num_experts=2)
    data, _, _ = _random_payload(cfg)
    n_floats = 1 + len(mlp_layout(cfg))
    radius_at = side_bytes(cfg) - 2
    bad = {
        "empty": b"",
        "short": data[:5],
        "truncated stream": data[:-4],
        "unaligned": data[:-1],
        "extra word": data + b"\x01\x00\x00\x00",
        "nan step": _corrupt(data, 0, struct.pack("<e", float("nan"))),
        "inf step": _corrupt(data, 0, struct.pack("<e", float("inf"))),
        "zero scale": _corrupt(data, 2, struct.pack("<e", 0.0)),
        "negative scale": _corrupt(data, 2 * (n_floats - 1), struct.pack("<e", -1.0)),
        "model 255": _corrupt(data, 2 * n_floats, b"\xff"),
        "radius 0": _corrupt(data, radius_at, struct.pack("<H", 0)),
        "radius huge": _corrupt(data, radius_at, struct.pack("<H", 65535)),
    }
    for name, payload in bad.items():
        with pytest.raises(MoecFormatError):
            unpack_payload(payload, cfg)
            pytest.fail(name)
    with pytest.raises(MoecFormatError):
        CODEC.unpack_payload(cfg, None, data[:-1], decode_weights=False)
    assert CODEC.unpack_payload(cfg, None, data, decode_weights=False) is None


def test_latent_count_checked_before_allocation():
    # A header claiming full-resolution levels of a huge volume (shape valid for format.py)
    # must be refused from "m" alone, before any grid is allocated.
    doc = GridConfig(SHAPE, num_levels=1, first_level=0).to_json()
    with pytest.raises(MoecFormatError, match="latents"):
        CODEC.config_from_json(doc, (4096, 4096, 4096))
    assert MAX_LATENTS <= 1 << 24


def test_file_side_imports_no_torch():
    # payload/codec/config/context must stay readable without the network code (and torch).
    import ast
    import pathlib

    import napari_moec.families.grid as grid

    allowed = {"__future__", "math", "struct", "dataclasses", "functools", "numpy", "constriction"}
    allowed |= {"entropy", "errors", "config", "context", "learned", "payload", ""}
    for name in ("payload", "codec", "config", "context", "learned"):
        tree = ast.parse((pathlib.Path(grid.__file__).parent / f"{name}.py").read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                mods = [node.module or ""] + [a.name for a in node.names if not node.module]
            elif isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            else:
                continue
            for mod in mods:
                assert mod.split(".")[-1] in allowed or mod in allowed, (name, mod)
    from napari_moec.families.grid.payload import MAX_LEVEL
    from napari_moec.quantize import MAX_LEVEL as product_max

    assert product_max == MAX_LEVEL


FUZZ_CFG = GridConfig(SHAPE, num_levels=3, num_experts=2)
FUZZ_DATA = _random_payload(FUZZ_CFG)[0]
FUZZ_CBC_CFG = GridConfig((16, 18, 16), num_levels=3, first_level=0, context="cbc")
FUZZ_CBC_DATA = _random_payload(FUZZ_CBC_CFG)[0]


def _accepts_or_refuses(payload: bytes, cfg: GridConfig = FUZZ_CFG) -> None:
    try:
        out = unpack_payload(payload, cfg)
    except MoecFormatError:
        return
    # A corruption the checks cannot see (a flipped bit in the ANS stream) decodes to a
    # well-formed payload: shapes from the config, integers within the radius.
    for q, g in zip(out.latents, out.config.grid_shapes, strict=True):
        assert q.shape == g and np.abs(q).max(initial=0) <= 32767


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_fuzz_random_bytes(payload):
    _accepts_or_refuses(payload)


@settings(max_examples=150, deadline=None)
@given(st.integers(0, len(FUZZ_DATA) * 8 - 1), st.integers(0, len(FUZZ_DATA)))
def test_fuzz_bit_flips_and_truncation(bit, cut):
    flipped = bytearray(FUZZ_DATA)
    flipped[bit // 8] ^= 1 << (bit % 8)
    _accepts_or_refuses(bytes(flipped))
    _accepts_or_refuses(FUZZ_DATA[:cut])
    _accepts_or_refuses(bytes(flipped[:cut]))


@settings(max_examples=150, deadline=None)
@given(st.integers(0, len(FUZZ_CBC_DATA) * 8 - 1), st.integers(0, len(FUZZ_CBC_DATA)))
def test_fuzz_coarse_context_payload(bit, cut):
    """A ``"cbc"`` payload (two levels coded with the coarser level's contexts) flipped or
    cut: a format error or a well-formed payload, never another exception."""
    assert sum(1 for g in FUZZ_CBC_CFG.grid_shapes if np.prod(g) >= 512) == 2
    flipped = bytearray(FUZZ_CBC_DATA)
    flipped[bit // 8] ^= 1 << (bit % 8)
    for payload in (bytes(flipped), FUZZ_CBC_DATA[:cut], bytes(flipped[:cut])):
        _accepts_or_refuses(payload, FUZZ_CBC_CFG)
