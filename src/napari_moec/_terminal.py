"""Long runs in a terminal: a progress bar that reads well in a log too, and Ctrl-C = stop.

Used by ``moec compress``: :class:`RunProgress` draws :class:`~napari_moec.events.Progress`
events with tqdm (whole lines every 10 s when stderr is a log or a pipe), and
:func:`stop_on_interrupt` turns the first Ctrl-C into a request to stop the job (training keeps
the best model so far; a tiled run keeps its finished tiles), for both the single-volume and
the tiled ``moec compress``.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Protocol

from tqdm import tqdm

from .events import Finalizing, Progress, Started

__all__ = ["RunProgress", "stop_on_interrupt"]


class Stoppable(Protocol):
    """A job that can be asked to stop early (a :class:`~napari_moec.training.Compressor`, a
    :class:`~napari_moec.tiled.runner.TiledCompressor`)."""

    def stop(self) -> None: ...


@contextlib.contextmanager
def stop_on_interrupt(
    compressor: Stoppable, on_stop: Callable[[], None] | None = None
) -> Iterator[threading.Event]:
    """The first Ctrl-C asks ``compressor`` to stop (a training still stores the best model so
    far, a tiled run keeps its finished tiles) and calls ``on_stop`` (e.g. a note saying so);
    a second one interrupts (KeyboardInterrupt). Yields the "Ctrl-C seen" event.

    A handler, not ``except KeyboardInterrupt``: the interrupt would land inside the training
    generator most of the time, and an exception raised in a generator finishes it, losing the
    model. Off the main thread (where Python allows no signal handler) Ctrl-C just interrupts.
    """
    interrupted = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield interrupted
        return

    def handler(signum, frame) -> None:
        if interrupted.is_set():
            raise KeyboardInterrupt
        interrupted.set()
        compressor.stop()
        if on_stop is not None:
            on_stop()

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield interrupted
    finally:
        signal.signal(signal.SIGINT, previous)


class _LineStream:
    """A stream that turns tqdm's in-place refreshes (``"\\r" + line``) into whole lines, for
    logs and pipes, where carriage returns pile up into one unreadable line."""

    def __init__(self, stream) -> None:
        self.stream = stream

    def write(self, text: str) -> None:
        line = text.replace("\r", "").rstrip()
        if line:
            self.stream.write(line + "\n")

    def flush(self) -> None:
        self.stream.flush()


class RunProgress:
    """A compression's progress on stderr: a tqdm bar in a terminal; in a log or pipe one
    line every 10 s; nothing when disabled (``--quiet``)."""

    def __init__(self, enabled: bool, stream=None) -> None:
        self.enabled = enabled
        stream = sys.stderr if stream is None else stream
        self.interactive = stream.isatty()
        self.stream = stream if self.interactive else _LineStream(stream)
        self.bar: tqdm | None = None

    def __enter__(self) -> RunProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, event) -> None:
        if not self.enabled:
            return
        if isinstance(event, Started):
            m = event.model
            self.note(
                f"training {event.num_parameters} parameters (width {m.hidden_features}, "
                f"{m.num_experts} experts) for a {event.budget_nbytes}-byte budget on "
                f"{event.device}"
            )
            self.bar = tqdm(
                total=event.total_steps,
                file=self.stream,
                unit="step",
                mininterval=0.2 if self.interactive else 10.0,
                dynamic_ncols=self.interactive,
                ncols=None if self.interactive else 120,
                # tqdm's own ETA assumes the run reaches its last step; the core's also knows
                # the time limit, so it goes in the postfix instead.
                bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}, {rate_fmt}{postfix}]",
            )
        elif isinstance(event, Progress) and self.bar is not None:
            load = "/".join(f"{x:.2f}" for x in event.expert_load)
            self.bar.set_postfix_str(
                f"PSNR~{event.psnr:.2f} dB, load {load}, {event.phase}, ETA {event.eta:.0f}s",
                refresh=False,
            )
            self.bar.update(event.step - self.bar.n)
        elif isinstance(event, Finalizing):
            self.close()
            self.note("quantizing, entropy coding and measuring the file...")

    def note(self, text: str) -> None:
        """A message line that does not break the bar."""
        if self.enabled:
            tqdm.write(text, file=self.stream)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
