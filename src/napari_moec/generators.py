"""Driving the generators that long jobs are written as.

Every long job (``Compressor.run``, a tile's training, ``TiledCompressor.run``) is a generator
that yields progress events and *returns* its result. Front ends drain it: they hand each event
to a callback (a progress bar, a napari layer, a Dask progress queue) and keep the return value
(:func:`drain`), or, when the front end is a generator itself (a napari worker's), pass each
event on and keep the return value (:func:`relay`). This is the one place that knows the
``StopIteration.value`` idiom.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import TypeVar

__all__ = ["drain", "relay"]

Event = TypeVar("Event")
Result = TypeVar("Result")
Out = TypeVar("Out")


def drain(
    job: Generator[Event, None, Result], on_event: Callable[[Event], None] | None = None
) -> Result:
    """Run ``job`` to its end, passing each yielded event to ``on_event``; return its result.

    An exception raised by ``on_event`` (a KeyboardInterrupt, a stop request) closes the job
    first, so its ``finally`` blocks run before the exception propagates.
    """
    while True:
        try:
            event = next(job)
        except StopIteration as done:
            return done.value
        if on_event is not None:
            try:
                on_event(event)
            except BaseException:
                job.close()
                raise


def relay(
    job: Generator[Event, None, Result], on_event: Callable[[Event], Out]
) -> Generator[Out, None, Result]:
    """Yield ``on_event(event)`` for each event of ``job``; return its result.

    For front ends that are generators themselves (napari's GeneratorWorker pauses and quits
    only between yields): ``result = yield from relay(job, to_frame)``. Closing the relay (a
    worker's quit) or an exception in ``on_event`` closes ``job`` first, so its ``finally``
    blocks run.
    """
    while True:
        try:
            event = next(job)
        except StopIteration as done:
            return done.value
        try:
            yield on_event(event)
        except BaseException:
            job.close()
            raise
