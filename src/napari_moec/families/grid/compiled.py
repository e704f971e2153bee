"""Elementwise kernels of the grid family compiled for a CPU, with the eager function as the
fallback.

A grid step on a CPU runs a few dozen elementwise torch ops over every latent (the rate proxy)
and over every voxel of the batch (the router's softmax and top-k). Each op is a pass over
memory with its own allocation; ``torch.compile`` fuses a kernel's passes into one loop. A
:class:`CompiledKernel` compiles its function on first use (a few seconds, once a process)
and gives up for good on the first failure (no C++ compiler, an unsupported platform) with one
warning, after which the eager function runs. The kernels compiled here take no part in
autograd (their callers form the derivatives themselves), so every compile happens in the
call, inside the guard, never lazily in a backward pass.

``NAPARI_MOEC_COMPILE=0`` keeps every kernel eager (no C++ compiler needed, bit-reproducible
across machines with and without one).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable

import torch

__all__ = ["COMPILE_ENV", "CompiledKernel", "compiling_enabled"]

#: Set to ``0`` to keep every kernel in eager torch.
COMPILE_ENV = "NAPARI_MOEC_COMPILE"


def compiling_enabled() -> bool:
    """Whether the environment allows compiled kernels (:data:`COMPILE_ENV`)."""
    return os.environ.get(COMPILE_ENV, "1").strip() != "0"


class CompiledKernel:
    """``fn`` compiled on first call (``torch.compile(fn, dynamic=True)``); on any failure to
    build or run the compiled form, one ``RuntimeWarning`` naming ``what`` and ``cost`` (what
    running eagerly costs), then ``fn`` itself from that call on.

    ``failure`` holds why compiling failed (None while it has not); :meth:`usable` says
    whether a caller should route a call here at all."""

    def __init__(self, fn: Callable, what: str, cost: str) -> None:
        self.fn, self.what, self.cost = fn, what, cost
        self.compiled: Callable | None = None
        self.failure: str | None = None

    def usable(self) -> bool:
        return self.failure is None and compiling_enabled()

    def __call__(self, *args, **kwargs):
        if not self.usable():
            return self.fn(*args, **kwargs)
        try:
            with warnings.catch_warnings():
                # torch's compiler stack warns of its own deprecations and internals (a caller
                # that turns warnings into errors would otherwise break the compile)
                warnings.simplefilter("ignore")
                if self.compiled is None:
                    self.compiled = torch.compile(self.fn, dynamic=True)
                return self.compiled(*args, **kwargs)
        except Exception as exc:  # any compiler or backend failure means eager
            self.failure = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
            warnings.warn(
                f"napari-moec: {self.what} could not be compiled ({self.failure}); training "
                f"continues with the eager one, {self.cost}. Set {COMPILE_ENV}=0 to skip the "
                "attempt.",
                RuntimeWarning,
                stacklevel=2,
            )
            return self.fn(*args, **kwargs)
