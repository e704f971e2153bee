"""What runs off the GUI thread, and how its failures are worded for the user.

The dock widget hands these functions to napari workers. Anything that can take more than a few
milliseconds (training, composing the live view's full-resolution frames, the final decode,
opening a file, SSIM) happens here, so the napari event loop keeps drawing while it runs.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Generator
from dataclasses import dataclass

import numpy as np
import torch

from ..compressed import Compressed
from ..errors import MoecError, TrainingError
from ..events import Preview, TrainEvent
from ..generators import relay
from ..metrics import psnr, ssim, ssim_applies
from ..training import Compressor
from .layers import difference, expert_indices
from .live_view import LiveFrame, compose_frame, final_frame
from .reader import read_moec

__all__ = [
    "Comparison",
    "Loaded",
    "Outcome",
    "WorkerFailure",
    "compress",
    "describe_error",
    "freeze_gc",
    "measure",
    "open_moec",
    "thaw_gc",
]

# torch.optim's optimizers import torch._dynamo (~830 modules, sympy included) the first time one
# is built. Left to the worker, that import held the GIL in stretches of 0.3-0.5 s on a busy
# 2-core machine, freezing napari's event loop early in a session's first training run.
# Importing it here moves the cost (1.5-3.5 s, once per session) to opening the dock widget,
# where torch itself is imported anyway.
with contextlib.suppress(ImportError):  # a torch build without dynamo: nothing to preload
    import torch._dynamo


#: Trainings running in this process that asked for the garbage collector's freeze.
_frozen_runs = 0


def freeze_gc() -> None:
    """Keep Python's full garbage collections short while a training runs (call on Start).

    With napari and torch loaded the interpreter tracks ~500k objects; a full (generation 2)
    collection scans them all while holding the GIL: 0.45-0.65 s on a busy 2-core machine, which
    froze napari's event loop once per run, whichever thread (GUI or worker) happened to trigger
    it. ``gc.freeze()`` moves every object alive now (modules, the viewer, the new live layers)
    out of the collector's reach, so collections during training scan only what training makes.
    Undone by :func:`thaw_gc` when the last running training ends.
    """
    global _frozen_runs
    _frozen_runs += 1
    gc.freeze()


def thaw_gc() -> None:
    """End :func:`freeze_gc` (connected to the worker's ``finished``): when no training is left
    running, frozen objects become collectable again, so nothing alive at Start leaks."""
    global _frozen_runs
    _frozen_runs = max(0, _frozen_runs - 1)
    if _frozen_runs == 0:
        gc.unfreeze()


class WorkerFailure(Exception):
    """Carries an exception out of the worker thread; the original is ``__cause__``.

    superqt's GeneratorWorker treats any RuntimeError raised by the generator as "the worker
    was deleted" and replaces it with a generic warning; TrainingError and torch's
    OutOfMemoryError are RuntimeErrors, so they are wrapped in this plain Exception first.
    """


@dataclass(frozen=True)
class Outcome:
    """A finished run: the file-backed result and its full-resolution decode."""

    compressed: Compressed
    image: np.ndarray
    labels: np.ndarray


@dataclass(frozen=True)
class Comparison:
    """Original vs decompressed: PSNR over the original's range, 3D SSIM (None when the volume
    is thinner than SSIM's 7-voxel window) and the signed difference volume."""

    psnr: float
    ssim: float | None
    difference: np.ndarray


def compress(compressor: Compressor) -> Generator[TrainEvent | LiveFrame, None, Outcome]:
    """Drive ``compressor.run()``, turning its previews into full-resolution frames.

    A real generator function, so napari builds a GeneratorWorker (with ``yielded``, pause and
    quit between yields). It yields the run's events, except that each
    :class:`~napari_moec.events.Preview` becomes a :class:`~napari_moec._napari.live_view.LiveFrame`
    (upsampled here, so the GUI thread only copies), and at the end a final frame of the
    stored file's full decode, which the run already made once (``Compressed.decode`` hands out
    a copy of it, no network pass).
    """
    shape = compressor.header.shape

    def framed(event):
        return compose_frame(event, shape) if isinstance(event, Preview) else event

    run = compressor.run()
    try:
        compressed = yield from relay(run, framed)
        image, labels = compressed.decode_with_labels()
    except Exception as exc:
        raise WorkerFailure(str(exc)) from exc
    finally:
        run.close()  # a worker quit mid-run: end training now (restores torch's threads)
    yield final_frame(compressed.report.steps, image, labels)
    return Outcome(compressed, image, labels)


@dataclass(frozen=True)
class Loaded:
    """A ``.moec`` file opened off the GUI thread: the result and its layer data."""

    path: str
    outcome: Outcome
    layer_data: list[tuple]


def open_moec(path: str) -> Loaded:
    """Read and decode a ``.moec`` file (runs in a worker: decoding takes seconds on a CPU)."""
    try:
        compressed, layer_data = read_moec(path)
    except Exception as exc:
        raise WorkerFailure(str(exc)) from exc
    (image, _, _), (shown, _, _) = layer_data
    labels = expert_indices(shown)
    return Loaded(str(path), Outcome(compressed, image, labels), layer_data)


def measure(original: np.ndarray, decoded: np.ndarray) -> Comparison:
    """PSNR, SSIM and difference of two same-shape volumes (runs in a worker: SSIM is slow)."""
    return Comparison(
        psnr(original, decoded),
        ssim(original, decoded) if ssim_applies(original.shape) else None,
        difference(original, decoded),
    )


def describe_error(exc: BaseException) -> str:
    """One sentence saying what went wrong and what to change."""
    if isinstance(exc, WorkerFailure) and exc.__cause__ is not None:
        exc = exc.__cause__
    oom = isinstance(exc, MemoryError | torch.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()
    )
    if oom:
        return (
            f"MoEC ran out of memory ({type(exc).__name__}). Lower the batch size or the "
            "number of experts, or choose the CPU device."
        )
    if isinstance(exc, TrainingError):
        return f"MoEC training failed: {exc}"
    if isinstance(exc, MoecError):
        return f"MoEC: {exc}"
    return f"MoEC: unexpected {type(exc).__name__}: {exc}"
