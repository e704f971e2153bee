"""The learned context model of the grid family's latents (``context="lin"``, learned.py):
what it saves over the checkerboard where neighbours predict a latent, what it costs where
they do not, the training proxy against the real coder, hostile parameters, and a short
training run to a file that decodes."""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from napari_moec.errors import MoecFormatError
from napari_moec.families.grid.config import GridConfig, mlp_layout
from napari_moec.families.grid.context import CB_MIN_LATENTS, even_mask, level_kind
from napari_moec.families.grid.decode import decode_region, model_from_payload
from napari_moec.families.grid.learned import decode_ops, ell, fit_level
from napari_moec.families.grid.model import GridModel
from napari_moec.families.grid.payload import pack_payload, side_bytes, unpack_payload
from napari_moec.families.grid.sizing import auto_config
from napari_moec.families.grid.train import GridTrainer, TrainSettings
from napari_moec.generators import drain

SHAPE = (24, 30, 20)


def _latents(cfg: GridConfig, kind: str, seed: int = 1) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for g in cfg.grid_shapes:
        if kind == "smooth":  # neighbours predict the value: what the mean term is for
            x = rng.normal(size=g)
            for axis in range(len(g)):
                x = np.cumsum(x, axis=axis) / 2.2
        else:  # independent Laplace integers: nothing to predict
            x = rng.laplace(0, 1.5, size=g)
        out.append(np.round(x).astype(np.int32))
    return out


def _pack(cfg: GridConfig, latents) -> bytes:
    rng = np.random.default_rng(0)
    weights = [rng.integers(-5, 6, size=s).astype(np.int32) for _, s in mlp_layout(cfg)]
    return pack_payload(cfg, latents, weights, [0.5] * len(weights), 1.0)


def _configs(shape=SHAPE):
    kw = {"num_levels": 2, "first_level": 0, "hidden": 4}
    return GridConfig(shape, context="cb", **kw), GridConfig(shape, context="lin", **kw)


def test_learned_context_beats_the_checkerboard_on_predictable_latents():
    cb, lin = _configs()
    latents = _latents(cb, "smooth")
    a, b = _pack(cb, latents), _pack(lin, latents)
    assert len(b) < 0.85 * len(a)  # measured 5692 vs 7550 bytes
    out = unpack_payload(b, lin)
    for got, want in zip(out.latents, latents, strict=True):
        np.testing.assert_array_equal(got, want)
    alpha, _, _ = fit_level(latents[0], int(np.abs(latents[0]).max()))
    assert alpha > 0.5  # the fit found the neighbours' mean worth predicting


def test_learned_context_costs_little_where_nothing_is_predictable():
    cb, lin = _configs()
    latents = _latents(cb, "iid")
    a, b = _pack(cb, latents), _pack(lin, latents)
    assert len(b) <= 1.01 * len(a)  # measured 6424 vs 6422 bytes
    assert fit_level(latents[0], int(np.abs(latents[0]).max()))[0] == 0.0


def test_side_bytes_and_payload_layout():
    cb, lin = _configs()
    n_lin = sum(math.prod(g) >= 512 for g in lin.grid_shapes)
    # per learned level: 3 float16 parameters, and 1 model byte instead of the 6 of cb
    assert side_bytes(lin) == side_bytes(cb) + n_lin * (6 - 5)
    small = GridConfig((4, 5, 6), num_levels=2, context="lin")  # no level of 512 latents
    assert side_bytes(small) == side_bytes(GridConfig((4, 5, 6), num_levels=2, context="none"))


def test_ell_is_mitchells_log2():
    a = np.array([0, 1, 3, 7, 100, 5000])
    exact = 4 * np.log2(1 + a)
    assert np.array_equal(ell(a)[:4], exact[:4])  # exact at powers of two
    assert np.all(np.abs(ell(a) - exact) <= 4 * 0.0861)  # Mitchell's bound


def test_training_proxy_follows_the_coder():
    """With the encoder's fitted parameters (and the even latents' Laplace scale at its
    maximum-likelihood value), the torch proxy's bits of the rounded latents are within 20%
    of the bits the stream really takes (same formulas; Laplace densities vs the coder's
    tables and rounded means), and the rate term reaches alpha, beta and gamma."""
    _, lin = _configs()
    latents = _latents(lin, "smooth")
    model = GridModel(lin)
    radius = max(int(np.abs(q).max()) for q in latents)
    with torch.no_grad():
        for y, q in zip(model.grids.latents, latents, strict=True):
            y.copy_(torch.from_numpy(q.astype(np.float32)))
        for i, q in enumerate(latents):
            if model.grids.kinds[i] == "lin":
                alpha, beta, gamma = fit_level(q, radius)
                model.grids.ctx[i] = torch.tensor([alpha, (beta - 8) / 4, gamma])
            even = even_mask(q.shape)
            model.grids.log_scale[i, 0] = float(np.log(max(np.abs(q[even]).mean(), 0.1)))
    with torch.no_grad():
        bits = model.grids.bits([y.detach() for y in model.grids.latents], model.grids.context())
    latents_only = GridConfig(SHAPE, num_levels=2, first_level=0, hidden=4, context="lin")
    zero = _pack(latents_only, [np.zeros_like(q) for q in latents])
    real = 8 * (len(_pack(latents_only, latents)) - len(zero))
    assert abs(float(bits) - real) < 0.2 * real  # measured +12%: Laplace vs the tables
    noisy = [y + 0.3 for y in model.grids.latents]
    model.grids.bits(noisy, model.grids.context()).backward()
    assert model.grids.ctx.grad is not None and torch.all(model.grids.ctx.grad[0] != 0)


def test_hostile_context_parameters():
    _, lin = _configs()
    data = _pack(lin, _latents(lin, "smooth"))
    first = 2 + 2 * len(mlp_layout(lin))
    for k in range(3):
        for bad in (float("nan"), float("inf"), -float("inf")):
            corrupt = bytearray(data)
            corrupt[first + 2 * k : first + 2 * k + 2] = struct.pack("<e", bad)
            with pytest.raises(MoecFormatError, match="context parameter"):
                unpack_payload(bytes(corrupt), lin)
    # finite but absurd parameters are clipped, never used to size anything
    corrupt = bytearray(data)
    corrupt[first : first + 6] = struct.pack("<3e", 60000.0, -60000.0, 60000.0)
    try:
        out = unpack_payload(bytes(corrupt), lin)
    except MoecFormatError:
        return
    assert [q.shape for q in out.latents] == lin.grid_shapes


FUZZ_CFG = _configs((12, 14, 10))[1]
FUZZ_DATA = _pack(FUZZ_CFG, _latents(FUZZ_CFG, "smooth"))


@settings(max_examples=150, deadline=None)
@given(st.integers(0, len(FUZZ_DATA) * 8 - 1), st.integers(0, len(FUZZ_DATA)))
def test_fuzz_learned_payload(bit, cut):
    flipped = bytearray(FUZZ_DATA)
    flipped[bit // 8] ^= 1 << (bit % 8)
    for payload in (bytes(flipped), FUZZ_DATA[:cut], bytes(flipped[:cut])):
        try:
            out = unpack_payload(payload, FUZZ_CFG)
        except MoecFormatError:
            continue
        for q, g in zip(out.latents, FUZZ_CFG.grid_shapes, strict=True):
            assert q.shape == g and np.abs(q).max(initial=0) <= 32767


def test_decode_ops_counts_the_extra_work():
    cb, lin = _configs()
    latents = _latents(cb, "smooth")
    radius = max(int(np.abs(q).max()) for q in latents)
    ops_cb, calls_cb = decode_ops("cb", cb.grid_shapes)
    ops_lin, calls_lin = decode_ops("lin", lin.grid_shapes, latents, radius + 5)
    assert ops_lin > ops_cb > 0
    assert calls_cb == 12 and 2 < calls_lin <= 2 * 128
    assert decode_ops("none", cb.grid_shapes) == (0, 2)
    ops_cbc, calls_cbc = decode_ops("cbc", cb.grid_shapes)  # level 0 coarse, level 1 as "cb"
    assert calls_cbc == 10 + 6 and ops_cbc > ops_cb


def test_one_rule_says_how_every_level_is_coded():
    """``level_kind`` is the one place a level's coder is decided; the payload, the rate
    proxy's groups and the operation count all follow it (they decided it in three places)."""
    small, big = (7, 8, 9), (8, 8, 8)  # 504 and 512 latents: the edge of CB_MIN_LATENTS
    assert math.prod(small) < CB_MIN_LATENTS == math.prod(big)
    for coarsest in (False, True):
        for context in ("none", "cb", "lin", "cbc"):
            assert level_kind(context, small, coarsest) == "one"
        assert level_kind("none", big, coarsest) == "one"
        assert level_kind("cb", big, coarsest) == "cb"
        assert level_kind("lin", big, coarsest) == "lin"
    assert level_kind("cbc", big, False) == "cbc" and level_kind("cbc", big, True) == "cb"
    from napari_moec.families.grid.payload import _kind

    for context in ("none", "cb", "lin", "cbc"):
        cfg = GridConfig(shape=(40, 36, 33), num_levels=4, first_level=0, context=context)
        grids = GridModel(cfg).grids
        assert grids.kinds == [_kind(cfg, i) for i in range(cfg.num_levels)]
        assert grids.kinds[-1] == "one"  # (40, 36, 33) at 1/8: 6 x 6 x 5 nodes
        with torch.no_grad():
            for y in grids.latents:
                y.copy_(torch.randint(-3, 4, y.shape, generator=torch.Generator().manual_seed(0)))
        # the proxy groups a level's latents (slots > 0) exactly where the coder does
        for slots, kind in zip(grids.slots(), grids.kinds, strict=True):
            assert bool((slots > 0).any()) == (kind in ("cb", "cbc")), kind


@pytest.mark.parametrize("context", ["lin", "cbc"])
def test_short_training_with_a_context_model_fits_and_decodes(context):
    torch.set_num_threads(1)
    rng = np.random.default_rng(3)
    vol = np.tanh(rng.normal(size=(24, 28, 20)).cumsum(0).cumsum(2) / 30).astype(np.float32)
    limit = vol.nbytes // 64 - 60
    cfg = auto_config(vol.shape, limit, context=context)
    assert cfg.context == context
    grids = GridModel(cfg).grids
    assert context in grids.kinds  # levels coded so
    trainer = GridTrainer(vol, cfg, limit, TrainSettings(steps=40, checkpoint_every=20))
    best = drain(trainer.run())
    assert len(best.payload) <= limit
    values, _ = decode_region(model_from_payload(unpack_payload(best.payload, cfg)))
    assert np.isfinite(values).all() and -best.score < float(np.var(vol))


@pytest.mark.parametrize("context", ["cb", "cbc", "lin"])
def test_a_tiles_proxy_reads_the_zeros_stored_outside_its_box(context):
    """A tile stores 0 for the latents outside its box (only margin voxels read them) and the
    coder reads those zeros as the context of the stored latents at the box's faces: the rate
    proxy now gives the stored latents those contexts (it gave them the trained values'),
    and the margin latents, which train but are not stored, the contexts they had."""
    from napari_moec.families.grid.context import coarse_slots, context_slots
    from napari_moec.families.grid.fit import quantize_latents
    from napari_moec.families.grid.interp import support_box
    from napari_moec.families.grid.learned import neighbour_sums

    cfg = GridConfig(shape=(24, 22, 26), num_levels=3, first_level=0, context=context)
    model = GridModel(cfg)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for y in model.grids.latents:
            y.copy_(torch.round(torch.randn(y.shape, generator=gen) * 2.5))
    grids = model.grids
    unboxed = grids.context().levels  # a whole file's contexts
    box = ((3, 20), (2, 18), (4, 22))
    grids.stored = [support_box(cfg.shape, g, cfg.kernel, box) for g in cfg.grid_shapes]
    signed = quantize_latents(model)  # the payload's integers: zeros outside each box
    stored = [np.abs(q.astype(np.int64)) for q in signed]
    levels = grids.context().levels
    checked = 0
    for i, kind in enumerate(grids.kinds):
        even, inside = even_mask(stored[i].shape), grids.stored[i]
        outside = np.ones(stored[i].shape, dtype=bool)
        outside[inside] = False
        if kind == "cbc":
            expect = (coarse_slots(stored[i], even, stored[i + 1]),)
        elif kind == "cb":
            expect = (context_slots(stored[i], even),)
        elif kind == "lin":
            expect = neighbour_sums(signed[i].astype(np.float32), even)
        else:
            continue
        got = levels[i] if kind == "lin" else (levels[i],)
        whole = unboxed[i] if kind == "lin" else (unboxed[i],)
        for g, e, w in zip(got, expect, whole, strict=True):
            np.testing.assert_array_equal(g.numpy()[inside], e[inside])  # as the coder sees
            np.testing.assert_array_equal(g.numpy()[outside], w.numpy()[outside])  # as before
        # the zeros outside the box moved some stored latents' contexts (the test can fail)
        assert (got[0].numpy()[inside] != whole[0].numpy()[inside]).any()
        checked += 1
    assert checked == 2  # levels 0 and 1; level 2 (7 x 7 x 8 nodes) is one group
