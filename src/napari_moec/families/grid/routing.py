"""The router's arithmetic: router logits (n, B) -> expert probabilities, each voxel's top-k
experts and their gate weights, with derivatives formed by hand.

Rows (n, B), experts first: a reduction over the n experts runs along the batch (torch's CPU
softmax/max/topk over a last dim of 2-8 cost more than the experts). Still, the router's ops
(~40 passes over the batch with the backward's, each its own allocation) cost a routed
training step on a CPU ~2.5 ms of ~20 (4 experts, top-2, 32,768 voxels, 2 threads), so from
``COMPILE_MIN_VOXELS`` voxels on a CPU a training step's forward runs as one compiled kernel
(:mod:`.compiled`) and the backward is a few ops written out (:class:`_Route`): nothing
compiles inside autograd, and a machine without a compiler runs the same functions eagerly.
Decoding (no gradient) always runs the eager kernel: a reader must not wait seconds for a
compiler to decode a file in one. The compiled kernel's gate weights may differ from the eager
one's in the last bit (exp is fused differently), so a file decodes with the weights it was
trained with to within that bit; the experts chosen are the same (comparisons are exact).
"""

from __future__ import annotations

import torch

from .compiled import CompiledKernel

__all__ = ["COMPILE_MIN_VOXELS", "route", "top_k_rows"]

#: Voxels (columns) from which a CPU routes through the compiled kernel: below it the
#: batch is a test's or a tiny tile's, where a few seconds of compiling would not pay.
COMPILE_MIN_VOXELS = 1 << 14


def top_k_rows(rows: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (k, B) of the ``k`` largest of rows (n, B) per column, largest first, the
    lower expert first on ties (a stable descending sort's first ``k``): ``k`` maxima over
    the expert axis (``max`` returns the first of equal maxima), each chosen row masked out
    before the next. ``torch.topk`` breaks ties in no stated order, and over a last dim of 4
    (after a transpose) cost a routed decode a fifth of its time (macaque, 4 experts, top-2);
    a chain of ``n - 1`` elementwise comparisons a pass cost ~3x these maxima."""
    index = rows.max(dim=0).indices
    picked = [index]
    for _ in range(1, k):
        rows = rows.scatter(0, index[None], float("-inf"))
        index = rows.max(dim=0).indices
        picked.append(index)
    return torch.stack(picked)


def _softmax(rows: torch.Tensor) -> torch.Tensor:
    """Softmax over the experts of rows (n, B), the maximum taken as :func:`top_k_rows`
    takes it (over the expert axis; exact, so the same values as a chain of maxima)."""
    top = rows.max(dim=0, keepdim=True).values
    z = torch.exp((rows - top).clamp_min(-60.0))  # see _route_values for the clamp
    return z / z.sum(dim=0, keepdim=True)


def _route_values(rows: torch.Tensor, k: int, probabilities: bool):
    """``(probabilities (n, B) or None, gate weights (k, B), experts (k, B))`` of rows (no
    graph). Top-1: the winner's probability (Switch); top-k: a softmax over the chosen logits
    (the chosen probabilities normalised). Probabilities are computed when asked for, and
    always for top-1 (its weight is one)."""
    if k > 1:
        index = top_k_rows(rows, k)
        chosen = rows.gather(0, index)  # (k, B), descending: row 0 is each voxel's max
        # The clamp keeps exp out of float32's denormals (below e^-87), where a CPU's exp
        # is ~70x slower: a decisive router's logits lie ~90 apart.
        z = torch.exp((chosen - chosen[0:1]).clamp_min(-60.0))
        total = z[0]
        for j in range(1, k):
            total = total + z[j]
        return (_softmax(rows) if probabilities else None), z / total, index
    probs = _softmax(rows)
    weight, index = probs.max(dim=0)  # the first on ties
    return probs, weight[None], index[None]


_VALUES_KERNEL = CompiledKernel(_route_values, "the router's kernel", "~10 % slower a routed step")


def _training_values(rows: torch.Tensor, k: int, probabilities: bool):
    """:func:`_route_values` for a training step: compiled for large CPU batches."""
    big = rows.device.type == "cpu" and rows.shape[1] >= COMPILE_MIN_VOXELS
    return (_VALUES_KERNEL if big else _route_values)(rows, k, probabilities)


def _softmax_backward(probs: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    return probs * (grad - (grad * probs).sum(dim=0, keepdim=True))


class _Route(torch.autograd.Function):
    """:func:`_route_values` with its derivatives written out: a softmax's Jacobian for the
    probabilities, and for top-k the chosen logits' softmax scattered back to their rows
    (the clamps' cut derivatives are those of terms below e^-60: zero here, ~1e-26 there)."""

    @staticmethod
    def forward(ctx, rows, k, probabilities):
        probs, weight, index = _training_values(rows.detach(), k, probabilities)
        ctx.k, ctx.n = k, rows.shape[0]
        ctx.save_for_backward(probs, weight, index)
        ctx.mark_non_differentiable(index)
        return probs, weight, index

    @staticmethod
    def backward(ctx, grad_probs, grad_weight, _):
        probs, weight, index = ctx.saved_tensors
        if ctx.k == 1:  # weight = probs[index]: one softmax Jacobian for both
            g = grad_probs if grad_probs is not None else torch.zeros_like(probs)
            if grad_weight is not None:
                g = g.scatter_add(0, index, grad_weight)
            return _softmax_backward(probs, g), None, None
        grad = weight.new_zeros((ctx.n, weight.shape[1]))
        if grad_weight is not None:  # the chosen rows of each column are distinct
            grad.scatter_(0, index, _softmax_backward(weight, grad_weight))
        if grad_probs is not None and probs is not None:
            grad = grad + _softmax_backward(probs, grad_probs)
        return grad, None, None


def route(rows: torch.Tensor, k: int, probabilities: bool = True):
    """Router logits (n, B) -> ``(probabilities (n, B) or None, gate weights (k, B),
    experts (k, B))``: the weights are the winner's probability for top-1 (Switch) and a
    softmax over the chosen logits for top-k; probabilities (for the balance loss) are
    ``None`` when not asked for and not needed."""
    if torch.is_grad_enabled() and rows.requires_grad:
        return _Route.apply(rows, k, probabilities)
    return _route_values(rows, k, probabilities)
