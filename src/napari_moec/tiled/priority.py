"""Lower the CPU priority of the Dask workers a run starts for napari: tiles train as fast as
ever on an idle machine, and on a busy one the viewer (and the user's other programs) keep the
CPU they need. Imports ``distributed``: imported only where a cluster starts."""

from __future__ import annotations

import os
import sys

from distributed import WorkerPlugin

__all__ = ["LowerPriority", "lower_priority"]


def lower_priority(niceness: int) -> None:
    """Lower this process's CPU priority by ``niceness``, every thread of it: Linux nices
    threads, not processes, and a thread started later inherits its creator's niceness."""
    if sys.platform.startswith("linux"):
        for task in os.listdir("/proc/self/task"):
            tid = int(task)
            try:
                now = os.getpriority(os.PRIO_PROCESS, tid)
                os.setpriority(os.PRIO_PROCESS, tid, min(19, now + niceness))
            except ProcessLookupError:  # a thread that has just ended
                pass
    else:  # pragma: no cover - not Linux
        import psutil

        process = psutil.Process()
        lower = getattr(psutil, "BELOW_NORMAL_PRIORITY_CLASS", None)  # Windows
        process.nice(lower if lower is not None else min(19, process.nice() + niceness))


class LowerPriority(WorkerPlugin):
    """Registered on a cluster's client: each worker (also one that restarts) lowers its own
    priority by ``niceness`` when it starts."""

    name = "napari-moec-lower-priority"
    idempotent = True

    def __init__(self, niceness: int) -> None:
        self.niceness = niceness

    def setup(self, worker) -> None:
        lower_priority(self.niceness)
