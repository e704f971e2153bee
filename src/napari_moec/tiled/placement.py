"""Pin each local Dask worker to cores of its own. Unpinned, the kernel may run two busy workers
on one core for a while and migrate them, which is part of why two workers were not twice one
(issue 24); pinned, worker ``i`` runs on the ``i``-th block of allowed cores and scaling
measures the work, not the scheduler. A block holds as many cores as the worker runs torch
threads (``ClusterShape.torch_threads``): threads pinned to fewer cores than there are of them
wait for each other at every parallel operation's barrier (one worker with 2 threads pinned
to one core trained 77 steps in 300 s where 2 cores train ~12,000; session 27). Only for local
clusters whose workers are named 0..n-1 (a ``LocalCluster``'s); imports ``distributed``:
imported only where a cluster starts. Linux only: elsewhere the plugin does nothing.
"""

from __future__ import annotations

import contextlib
import os

from distributed import WorkerPlugin

__all__ = ["PinToCore", "core_block", "pin_to_cores"]


def core_block(cores: list[int], slot: int, count: int) -> list[int]:
    """The ``slot``-th block of ``count`` consecutive cores of ``cores`` (modulo the number of
    whole blocks; ``count`` at most ``len(cores)``)."""
    count = max(1, min(count, len(cores)))
    start = (slot % (len(cores) // count)) * count
    return cores[start : start + count]


def pin_to_cores(slot: int, count: int = 1) -> list[int] | None:
    """Pin every thread of this process (a thread started later inherits it) to the
    ``slot``-th block of ``count`` of the cores this process may use (:func:`core_block`);
    return those cores, or None where affinity cannot be set."""
    if not hasattr(os, "sched_setaffinity"):  # pragma: no cover - not Linux
        return None
    block = core_block(sorted(os.sched_getaffinity(0)), slot, count)
    for task in os.listdir("/proc/self/task"):
        with contextlib.suppress(ProcessLookupError):  # a thread that has just ended
            os.sched_setaffinity(int(task), set(block))
    return block


class PinToCore(WorkerPlugin):
    """Registered on a local cluster's client: each worker (also one that restarts) pins
    itself to the block of ``cores`` cores its name numbers."""

    name = "napari-moec-pin-to-core"
    idempotent = True

    def __init__(self, cores: int = 1) -> None:
        self.cores = cores

    def setup(self, worker) -> None:
        try:
            slot = int(worker.name)
        except (TypeError, ValueError):  # a worker not started by a LocalCluster
            return
        pin_to_cores(slot, self.cores)
