"""The fused rate proxy (``slot_laplace_bits``) against the plain one it replaces: the same
bits and the same gradients for the latents and the slot scales, over the whole range a run
meets (exact zeros, the ±1/2 branch boundary, latents far in the tail, scales from very peaked
to very flat), and under ``no_grad`` the same value without a graph."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

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
