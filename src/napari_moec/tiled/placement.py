"""Pin each local Dask worker to its own core. Unpinned, the kernel may run two busy workers on
one core for a while and migrate them, which is part of why two workers were not twice one
(issue 24); pinned, worker ``i`` runs on the ``i``-th allowed core and scaling measures the
work, not the scheduler. Only for local clusters whose workers are named 0..n-1 (a
``LocalCluster``'s); imports ``distributed``: imported only where a cluster starts. Linux only:
elsewhere the plugin does nothing.
"""

from __future__ import annotations

import contextlib
import os

from distributed import WorkerPlugin

__all__ = ["PinToCore", "pin_to_core"]


def pin_to_core(slot: int) -> int | None:
    """Pin every thread of this process (a thread started later inherits it) to the
    ``slot``-th core this process may use (modulo their count); return the core, or None where
    affinity cannot be set."""
    if not hasattr(os, "sched_setaffinity"):  # pragma: no cover - not Linux
        return None
    cores = sorted(os.sched_getaffinity(0))
    core = cores[slot % len(cores)]
    for task in os.listdir("/proc/self/task"):
        with contextlib.suppress(ProcessLookupError):  # a thread that has just ended
            os.sched_setaffinity(int(task), {core})
    return core


class PinToCore(WorkerPlugin):
    """Registered on a local cluster's client: each worker (also one that restarts) pins
    itself to the core its name numbers."""

    name = "napari-moec-pin-to-core"
    idempotent = True

    def setup(self, worker) -> None:
        try:
            slot = int(worker.name)
        except (TypeError, ValueError):  # a worker not started by a LocalCluster
            return
        pin_to_core(slot)
