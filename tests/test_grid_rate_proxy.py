"""The fused rate proxy (``slot_laplace_bits``) against the plain one it replaces: the same
bits and the same gradients for the latents and the slot scales, over the whole range a run
meets (exact zeros, the ±1/2 branch boundary, latents far in the tail, scales from very peaked
to very flat), and under ``no_grad`` the same value without a graph; large levels the same
through the compiled CPU kernel, and eagerly when it cannot be compiled."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from napari_moec.families.grid import rate
from napari_moec.families.grid.rate import laplace_bits, slot_laplace_bits


def _reference(x, log_scale, slots):
    x = x.detach().clone().requires_grad_(True)
    table = log_scale.detach().clone().requires_grad_(True)
    total = laplace_bits(x, table[slots]).sum()
    total.backward()
    return total.detach(), x.grad, table.grad


def _fused(x, log_scale, slots):
    x = x.detach().clone().requires_grad_(True)
    table = log_scale.detach().clone().requires_grad_(True)
    total = slot_laplace_bits(x, table, slots)
    total.backward()
    return total.detach(), x.grad, table.grad


def _check(x, log_scale, slots):
    ref, fused = _reference(x, log_scale, slots), _fused(x, log_scale, slots)
    assert torch.allclose(fused[0], ref[0], rtol=1e-5, atol=1e-3)
    assert torch.allclose(fused[1], ref[1], rtol=1e-4, atol=1e-5)
    assert torch.allclose(fused[2], ref[2], rtol=1e-4, atol=1e-3)


def test_same_bits_and_gradients_on_a_latent_grid():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(6, 20, 20, generator=gen) * 3
    x[0] = 0.0  # exact zeros (most latents at low rates)
    x[1, :5] = 0.5  # the branch boundary
    x[1, 5:10] = -0.5
    x[2] = torch.round(x[2]) + torch.rand(20, 20, generator=gen) - 0.5  # a noisy grid
    x[3, 0, :4] = torch.tensor([40.0, -75.0, 300.0, 1e4])  # far in the tail: the clamps
    log_scale = torch.tensor([-4.0, -1.5, 0.0, 0.7, 2.5, 5.0])
    slots = torch.randint(0, 6, x.shape, generator=gen)
    _check(x, log_scale, slots)


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(st.floats(-60, 60, allow_nan=False, width=32), min_size=1, max_size=40),
    scales=st.lists(st.floats(-6, 6, allow_nan=False, width=32), min_size=6, max_size=6),
    seed=st.integers(0, 2**16),
)
def test_same_bits_and_gradients_anywhere(values, scales, seed):
    x = torch.tensor(values, dtype=torch.float32)
    slots = torch.randint(0, 6, x.shape, generator=torch.Generator().manual_seed(seed))
    _check(x, torch.tensor(scales, dtype=torch.float32), slots)


def test_without_gradients_it_is_a_plain_value():
    x = torch.randn(5, 5, requires_grad=True)
    table = torch.zeros(6, requires_grad=True)
    slots = torch.zeros(5, 5, dtype=torch.long)
    with torch.no_grad():
        value = slot_laplace_bits(x, table, slots)
    assert not value.requires_grad
    assert torch.allclose(value, laplace_bits(x.detach(), table.detach()[slots]).sum())


def _large_level(gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A level big enough for the compiled kernel, with zeros, branch edges and tails."""
    x = torch.randn(rate.COMPILE_MIN_LATENTS, generator=gen) * 2
    x[:1000] = 0.0
    x[1000:1100] = 0.5
    x[1100:1200] = -0.5
    x[1200:1204] = torch.tensor([40.0, -75.0, 300.0, 1e4])
    log_scale = torch.tensor([-4.0, -1.5, 0.0, 0.7, 2.5, 5.0])
    return x, log_scale, torch.randint(0, 6, x.shape, generator=gen)


def test_large_levels_use_the_compiled_kernel_with_the_same_bits_and_gradients(monkeypatch):
    monkeypatch.delenv(rate.COMPILE_ENV, raising=False)
    monkeypatch.setattr(rate.BITS_KERNEL, "failure", None)
    x, log_scale, slots = _large_level(torch.Generator().manual_seed(1))
    assert rate._kernel_for(x) is rate.BITS_KERNEL
    assert rate._kernel_for(x[:-1]) is rate._slot_bits  # one latent short: eager
    _check(x, log_scale, slots)
    with torch.no_grad():
        value = slot_laplace_bits(x, log_scale, slots)
    assert torch.allclose(value, laplace_bits(x, log_scale[slots]).sum(), rtol=1e-5)
    assert rate.BITS_KERNEL.failure is None, rate.BITS_KERNEL.failure


def test_the_environment_switch_keeps_the_eager_kernel(monkeypatch):
    monkeypatch.setenv(rate.COMPILE_ENV, "0")
    x = torch.zeros(rate.COMPILE_MIN_LATENTS)
    assert rate._kernel_for(x) is rate._slot_bits


def test_a_kernel_that_cannot_be_compiled_warns_once_and_trains_on_eagerly(monkeypatch):
    def no_compiler(*args, **kwargs):
        raise RuntimeError("InvalidCxxCompiler: no working C++ compiler found\nmore detail")

    monkeypatch.delenv(rate.COMPILE_ENV, raising=False)
    monkeypatch.setattr(rate.BITS_KERNEL, "failure", None)
    monkeypatch.setattr(rate.BITS_KERNEL, "compiled", no_compiler)
    x, log_scale, slots = _large_level(torch.Generator().manual_seed(2))
    with pytest.warns(RuntimeWarning, match="could not be compiled.*no working C"):
        _check(x, log_scale, slots)
    assert rate.BITS_KERNEL.failure.startswith("RuntimeError: InvalidCxxCompiler")
    assert rate._kernel_for(x) is rate._slot_bits  # given up for the process


def _per_level_bits(grids, values, context, stored):
    """The rate proxy one level at a time, from ``laplace_bits`` (what ``LatentGrids.bits``
    computed before its levels shared one pass): a slot level under its slot's scale, a
    learned-context level under its predicted mean and spread (learned.py)."""
    from napari_moec.families.grid.learned import MAX_SPREAD, MEAN_LIMIT, MIN_SPREAD

    total = 0
    for i, v in enumerate(values):
        box = grids.stored[i] if stored and grids.stored is not None else ...
        even = getattr(grids, f"even{i}")[box]
        if grids.kinds[i] != "lin":
            slots = context.levels[i][box]
            total = total + laplace_bits(v[box], grids.log_scale[i][slots]).sum()
            continue
        s_sum, a_sum = (t[box] for t in context.levels[i])
        alpha, c0, c1 = grids.ctx[i]
        mu = (alpha * s_sum / (2 * v.ndim)).clamp(-MEAN_LIMIT, MEAN_LIMIT)
        log2_spread = (c0 + c1 * torch.log2(1.0 + a_sum)).clamp(
            MIN_SPREAD / 4 - 2, MAX_SPREAD / 4 - 2
        )
        log_b = -torch.log(torch.log1p(1.0 / torch.exp2(log2_spread)))
        odd = laplace_bits(v[box] - mu, log_b)
        total = total + torch.where(even, laplace_bits(v[box], grids.log_scale[i][0]), odd).sum()
    return total


@pytest.mark.parametrize("context", ["cb", "none", "lin", "cbc"])
@pytest.mark.parametrize("stored", [False, True])
def test_all_levels_in_one_pass_give_each_levels_bits_and_gradients(context, stored):
    """``LatentGrids.bits`` runs its slot levels through one call of the fused proxy (their
    slots offset into the flattened scale table): the bits and every gradient (latents,
    scales, learned-context parameters) are those of one call per level, for every latent
    and for a tile's stored boxes."""
    from napari_moec.families.grid.config import GridConfig
    from napari_moec.families.grid.interp import support_box
    from napari_moec.families.grid.model import GridModel

    shape = (20, 26, 18)
    cfg = GridConfig(shape, num_levels=4, first_level=0, hidden=4, context=context)
    model = GridModel(cfg)
    grids = model.grids
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for y in grids.latents:
            y.copy_(torch.round(torch.randn(y.shape, generator=gen) * 2.5))
        grids.log_scale.copy_(torch.randn(grids.log_scale.shape, generator=gen))
    if stored:
        box = ((2, 15), (0, 11), (5, 18))
        grids.stored = [support_box(shape, g, cfg.kernel, box) for g in cfg.grid_shapes]
    assert ("lin" in grids.kinds) == (context == "lin")
    assert ("cb" in grids.kinds) == (context == "cb")
    assert ("cbc" in grids.kinds) == (context == "cbc")
    context_now = grids.context()
    noise = [torch.rand(y.shape, generator=gen) - 0.5 for y in grids.latents]

    def run(fn):
        grids.zero_grad(set_to_none=True)
        values = [y + u for y, u in zip(grids.latents, noise, strict=True)]
        total = fn(values)
        total.backward()
        params = [*grids.latents, *grids.rate_parameters()]
        return total.detach(), [p.grad.clone() for p in params]

    fused = run(lambda v: grids.bits(v, context_now, stored))
    plain = run(lambda v: _per_level_bits(grids, v, context_now, stored))
    assert torch.allclose(fused[0], plain[0], rtol=1e-5)
    for a, b in zip(fused[1], plain[1], strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)
    if stored:  # a latent outside every stored box costs nothing
        outside = torch.ones(grids.latents[0].shape, dtype=torch.bool)
        outside[grids.stored[0]] = False
        assert outside.any() and torch.all(fused[1][0][outside] == 0)
