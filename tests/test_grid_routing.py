"""The router's arithmetic (``families/grid/routing.py``): the hand-written derivatives equal
autograd's through the eager function; a training batch large enough for the compiled kernel
routes as the eager one does, or eagerly (one warning) where nothing can be compiled; decoding
always routes eagerly."""

from __future__ import annotations

import warnings

import pytest
import torch

from napari_moec.families.grid import routing
from napari_moec.families.grid.compiled import COMPILE_ENV


def _rows(n: int, voxels: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    rows = torch.randn(n, voxels, generator=gen) * 3
    rows[:, :50] = torch.round(rows[:, :50])  # exact ties
    rows[0, 50:60] += 120.0  # a decisive router: logits far apart (the clamps)
    return rows


def _compiled_kernel_replaced_by(fake, monkeypatch) -> None:
    """Compiling allowed, no failure yet, and ``fake`` standing in for the compiled kernel."""
    monkeypatch.delenv(COMPILE_ENV, raising=False)
    monkeypatch.setattr(routing._VALUES_KERNEL, "failure", None)
    monkeypatch.setattr(routing._VALUES_KERNEL, "compiled", fake)


def _autograd_reference(rows, k, probabilities, cot_p, cot_w):
    x = rows.detach().clone().requires_grad_(True)
    probs, weight, index = routing._route_values(x, k, probabilities)
    loss = (weight * cot_w).sum() + ((probs * cot_p).sum() if probabilities else 0)
    (grad,) = torch.autograd.grad(loss, x)
    return probs, weight, index, grad


@pytest.mark.parametrize(
    ("n", "k", "probabilities"), [(4, 1, True), (4, 2, True), (4, 2, False), (5, 3, True)]
)
def test_hand_written_derivatives_equal_autograds(n, k, probabilities, monkeypatch):
    monkeypatch.setenv(COMPILE_ENV, "0")  # the eager kernel on both sides
    rows = _rows(n, 3000, n * 10 + k)
    gen = torch.Generator().manual_seed(7)
    cot_p, cot_w = torch.randn(n, 3000, generator=gen), torch.randn(k, 3000, generator=gen)
    want = _autograd_reference(rows, k, probabilities, cot_p, cot_w)
    x = rows.clone().requires_grad_(True)
    probs, weight, index = routing.route(x, k, probabilities)
    loss = (weight * cot_w).sum() + ((probs * cot_p).sum() if probabilities else 0)
    (grad,) = torch.autograd.grad(loss, x)
    assert torch.equal(index, want[2])
    assert torch.equal(weight, want[1])
    if probabilities:
        assert torch.equal(probs, want[0])
    # ties split torch.maximum's gradient in autograd; the hand-written one gives it to the
    # chosen expert: compare away from the tied columns
    torch.testing.assert_close(grad[:, 50:], want[3][:, 50:], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("n", "k"), [(4, 1), (4, 2)])
def test_large_batches_route_through_the_compiled_kernel_as_the_eager_one(n, k, monkeypatch):
    monkeypatch.delenv(COMPILE_ENV, raising=False)
    monkeypatch.setattr(routing._VALUES_KERNEL, "failure", None)
    rows = _rows(n, routing.COMPILE_MIN_VOXELS, 3)
    eager = routing._route_values(rows, k, True)
    got = routing.route(rows.requires_grad_(True), k)  # training: compiled
    assert routing._VALUES_KERNEL.failure is None, routing._VALUES_KERNEL.failure
    assert routing._VALUES_KERNEL.compiled is not None
    assert torch.equal(got[2], eager[2])  # the same experts
    torch.testing.assert_close(got[1], eager[1], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(got[0], eager[0], rtol=1e-6, atol=1e-7)


def test_a_router_kernel_that_cannot_be_compiled_warns_once_and_routes_eagerly(monkeypatch):
    def no_compiler(*args, **kwargs):
        raise RuntimeError("InvalidCxxCompiler: no working C++ compiler found\nmore detail")

    _compiled_kernel_replaced_by(no_compiler, monkeypatch)
    rows = _rows(4, routing.COMPILE_MIN_VOXELS, 4)
    rows.requires_grad_(True)
    with pytest.warns(RuntimeWarning, match="router's kernel could not be compiled"):
        got = routing.route(rows, 2)
    assert routing._VALUES_KERNEL.failure.startswith("RuntimeError: InvalidCxxCompiler")
    want = routing._route_values(rows.detach(), 2, True)
    assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # given up for the process: no second warning
        routing.route(rows, 2)


def test_decoding_routes_eagerly_whatever_the_batch(monkeypatch):
    """No gradient (a reader decoding a file): the eager kernel, never a compile."""

    def must_not_compile(*args, **kwargs):
        raise AssertionError("decoding compiled the router's kernel")

    _compiled_kernel_replaced_by(must_not_compile, monkeypatch)
    rows = _rows(4, routing.COMPILE_MIN_VOXELS * 2, 5)
    with torch.no_grad():
        got = routing.route(rows.requires_grad_(True), 2, probabilities=False)
    want = routing._route_values(rows.detach(), 2, False)
    assert got[0] is None and torch.equal(got[1], want[1]) and torch.equal(got[2], want[2])
