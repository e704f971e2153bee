"""Tutel (Microsoft's MoE library, which the MoEC paper used for dispatch) as an optional
backend for the MoE layer's routing step.

With ``backend="tutel"`` the route -> dispatch -> experts -> combine step of
:class:`~.moe.MoESiren` runs through Tutel's own machinery: its top-k gating
(``tutel.impls.fast_dispatch.extract_critical``: top-k of the softmax scores, gate weights,
per-expert slot locations) and its fast dispatch/combine kernels (``fast_encode`` /
``fast_decode``: the C++ loops of ``tutel_custom_kernel`` on CPU, JIT-compiled CUDA kernels on
a GPU). Our own parts stay ours: the shared sine encoder, the router network that produces the
logits, the batched SIREN experts, the shared decoder and the balance loss of paper Eq. 3.
Router freezing is the training loop's (it stops the router's gradients), so both backends
share it.

Semantics match the native path; each point below is checked in ``tests/test_tutel.py``:

- Top-k and gate weights: both take ``torch.topk`` of the float32 softmax; top-1 weights are the
  probability, top-2 weights are renormalised to sum to 1 (Tutel's ``normalize_gate``; its
  clamp at float32 eps never acts, since the top-2 of a softmax sum to at least 2/n).
- Priority: Tutel without ``batch_prioritized_routing`` fills each expert with all first
  choices in batch order, then all second choices: the native choice-major (GShard) order.
- Capacity: Tutel sizes buffers as ``k * floor(Cf * ceil(B / n))``, which differs from our
  ``ceil(Cf * k * B / n)`` (e.g. B=10, n=3, k=2, Cf=1.25: 10 slots against 9). We replace its
  capacity with ours (:func:`~napari_moec.families.siren.moe.expert_capacity`) in the routing data
  before dispatching, so the same assignments are dropped. Dropless decoding asks Tutel for
  ``capacity_factor=0``: the busiest expert's count, as natively.
- Padding: Tutel's empty slots hold zeros, the native ones a copy of point 0. Neither is ever
  combined and neither gets a gradient, so outputs and gradients do not depend on it.
- Balance loss: Eq. 3 from :func:`~.gate.balance_loss`, passed to Tutel as its
  ``loss_fn`` (Tutel's own ``gshard_loss`` is the same formula).
- Numbers: not bitwise. Tutel's CPU kernels sum a gate's gradient as a sequential dot product,
  torch as a vectorised reduction, so float32 results differ in the last bits.

Nothing here is stored: the ``.moec`` file holds the same layout whichever backend trained it,
and a file trained with one decodes with the other. Tutel is imported lazily, only when the
backend is used, so ``import napari_moec`` works without it.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import torch

from ...errors import ConfigError
from .gate import balance_loss
from .moe import MoEOutput, MoESiren, expert_capacity

__all__ = [
    "BACKENDS",
    "INSTALL_HINT",
    "TUTEL_COMMIT",
    "TutelMixture",
    "available_backends",
    "resolve_backend",
    "tutel_importable",
    "use_backend",
]

#: Concrete backends; "auto" resolves to one of them (:func:`resolve_backend`).
BACKENDS = ("native", "tutel")
#: The Tutel commit we build, test and measure against (Tutel 0.3, 2025-01-18).
TUTEL_COMMIT = "82af7aad9fc3ec981395ba97e7242a480984a55e"
#: How to install it: Tutel is not on PyPI, and its setup.py imports torch (no build isolation).
INSTALL_HINT = (
    "pip install --no-build-isolation "
    f"git+https://github.com/microsoft/tutel@{TUTEL_COMMIT} (needs torch and a C++ compiler)"
)


def _fast_dispatch() -> ModuleType:
    """``tutel.impls.fast_dispatch``; ImportError (or OSError from its C++ extension) when
    Tutel is missing or broken."""
    return importlib.import_module("tutel.impls.fast_dispatch")


def _tutel_has_cuda() -> bool:
    """Whether Tutel was built with its CUDA kernels (a CUDA toolkit at install time)."""
    kernels = importlib.import_module("tutel_custom_kernel")
    return hasattr(kernels, "inject_source")


def tutel_importable() -> bool:
    """Whether Tutel and its compiled kernels import in this environment."""
    try:
        _fast_dispatch()
    except (ImportError, OSError):
        return False
    return True


def available_backends() -> tuple[str, ...]:
    """The backend choices that work here, "auto" first: what a front end should offer."""
    return ("auto", *BACKENDS) if tutel_importable() else ("auto", "native")


def _measured_faster(kind: str, threads: int) -> str:
    """What "auto" runs, from docs/benchmarks/backends.md. On one CPU thread Tutel's training
    step took 0-7% (median 3%) less CPU time than the native one on all 14 networks measured
    (2-105 wide, 2-16 experts, top-1 and top-2), and its decoding was no slower. With two
    threads neither was consistently faster on our shared, overloaded 2-core machine, and
    Tutel's CPU kernels use one thread, so native keeps multi-threaded runs; GPUs are not
    measured yet, so native (the tested default) keeps them too."""
    return "tutel" if kind == "cpu" and threads == 1 else "native"


def resolve_backend(name: str, device: torch.device | str, threads: int | None = None) -> str:
    """The concrete backend ("native" or "tutel") that ``name`` means on ``device`` with
    ``threads`` CPU threads (None: torch's current number).

    Raises ConfigError for an unknown name, for "tutel" when Tutel does not import (with the
    command that installs it), and for "tutel" on a GPU when Tutel was built without CUDA.
    """
    kind = torch.device(device).type
    if name == "auto":
        if not tutel_importable() or (kind == "cuda" and not _tutel_has_cuda()):
            return "native"
        return _measured_faster(kind, torch.get_num_threads() if threads is None else threads)
    if name not in BACKENDS:
        raise ConfigError(f"backend must be one of {('auto', *BACKENDS)}, got {name!r}")
    if name == "tutel":
        try:
            _fast_dispatch()
        except (ImportError, OSError) as err:
            raise ConfigError(
                f"backend 'tutel' needs Tutel, which does not import here ({err}); "
                f"install it with: {INSTALL_HINT}"
            ) from None
        if kind == "cuda" and not _tutel_has_cuda():
            raise ConfigError(
                "backend 'tutel' on a GPU needs Tutel's CUDA kernels, but this Tutel was built "
                "without them: reinstall it where the CUDA toolkit is present, or use "
                "backend 'native'"
            )
    return name


def use_backend(model: MoESiren, backend: str) -> MoESiren:
    """Route ``model`` through ``backend`` ("native" or "tutel"; resolve "auto" first with
    :func:`resolve_backend`). Changes no parameter; returns ``model``."""
    if backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {BACKENDS}, got {backend!r}")
    model.mixture = TutelMixture() if backend == "tutel" else None
    return model


def _eq3_loss(scores: torch.Tensor, top_indices: torch.Tensor) -> torch.Tensor:
    # Tutel calls loss_fn(scores, top-k indices); Eq. 3 counts first choices only.
    return balance_loss(scores, top_indices[:, 0])


class TutelMixture:
    """The routing step of :class:`MoESiren` through Tutel (see the module docstring).

    Called by the model as ``mixture(model, features, logits, capacity_factor)``; returns a
    :class:`MoEOutput` whose value is the combined (B, hidden) features before the decoder.
    Stateless, so a routed model still pickles and deep-copies.
    """

    def __init__(self) -> None:
        _fast_dispatch()  # fail here, not at the first step

    def __call__(
        self,
        model: MoESiren,
        features: torch.Tensor,
        logits: torch.Tensor,
        capacity_factor: float | None,
    ) -> MoEOutput:
        cfg = model.config
        batch, n = features.shape[0], cfg.num_experts
        tutel = _fast_dispatch()  # a sys.modules lookup after the first import
        with torch.autocast(device_type=logits.device.type, enabled=False):
            scores = torch.softmax(logits.float(), dim=-1)
            critical, aux_loss = tutel.extract_critical(
                scores,
                top_k=cfg.top_k,
                loss_fn=_eq3_loss,
                # 0 = dropless: the busiest expert's count. Training replaces Tutel's
                # capacity with ours below, so its own Cf rounding is never used.
                capacity_factor=0.0 if capacity_factor is None else capacity_factor,
                batch_prioritized_routing=False,
                normalize_gate=True,
            )
        if capacity_factor is not None:
            capacity = expert_capacity(capacity_factor, cfg.top_k, batch, n)
            critical = (*critical[:4], capacity, *critical[5:])
        capacity = critical[4]
        _, indices, locations, _, _, _ = critical

        # Tutel's kernels read float32 (or half on CUDA) rows and need them contiguous.
        features = features.float().contiguous()
        dispatched = tutel.fast_encode(features, critical)  # (n, capacity, hidden)
        expert_out = model.experts(dispatched).reshape(n * capacity, -1).contiguous()
        combined = tutel.fast_decode(expert_out, critical)  # (B, hidden), gate-weighted

        kept = torch.stack([location < capacity for location in locations]).any(dim=0)
        load = torch.bincount(indices[0].long(), minlength=n).float() / batch
        return MoEOutput(combined, aux_loss, kept, load)
