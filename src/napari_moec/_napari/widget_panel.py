"""The seams between the dock widget's parts: the displays a run drives (:class:`RunPanel`) and
what every run offers the widget (:class:`Run`).

The widget owns the Qt controls and one run at a time; a run (``widget_single.SingleRun`` for
an in-memory layer, ``widget_tiled.TiledRun`` for a big or lazy one) owns its job, its napari
worker and its live layers, and writes progress into the panel. The widget never asks which kind
of run it holds: Pause, Stop and closing go through the protocol.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from .widget_run import describe_error

__all__ = ["Run", "RunPanel"]


@dataclass(frozen=True)
class RunPanel:
    """The widget's displays and controls that runs and results write to (owned by the widget).

    ``show_error`` is the widget's notification hook (napari's ``show_error``), ``set_running``
    greys the controls that must not change during a run (or enables them again).
    """

    viewer: Any
    progress: Any  # QProgressBar
    status: Any  # QLabel
    readouts: dict[str, Any]  # QLabel by "step", "loss", "psnr", "load", "result"
    pause_button: Any  # QPushButton
    stop_button: Any  # QPushButton
    show_error: Callable[[str], None]
    set_running: Callable[[bool], None]

    def worker_failed(self, exc: BaseException) -> None:
        """A run's worker raised: one sentence in the status line and a notification."""
        message = describe_error(exc)
        self.status.setText(message)
        self.show_error(message)

    def stopping(self, text: str) -> None:
        """Stop was pressed: the buttons go grey until the run has ended."""
        self.pause_button.setText("Pause")
        self.pause_button.setEnabled(False)
        self.stop_button.setEnabled(False)
        self.status.setText(text)


class Run(Protocol):
    """A compression started from the widget; made by Start, dropped when its worker finishes.

    Attributes
    ----------
    worker
        The napari GeneratorWorker running the job (None before :meth:`start`).
    """

    worker: Any

    def start(self) -> None:
        """Make the live layers, grey the controls and start the worker."""

    def toggle_pause(self) -> None:
        """Pause or resume between two training steps."""

    def stop(self) -> None:
        """End early, keeping what is done (the best model so far, or the finished tiles)."""

    def shutdown(self) -> None:
        """The widget or the viewer is closing: end now and touch no layer any more."""
