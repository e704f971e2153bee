"""Where tiles run: a Dask distributed ``Client`` given by the caller, one connected to a
scheduler address, or a ``LocalCluster`` sized for this machine.

Local default: one worker process per core, one tile at a time each, one torch thread per tile
(independent small networks scale across processes far better than across threads of one
matmul), memory split evenly between workers. With a CUDA GPU and device "auto"/"cuda": one
worker on the GPU (several GPUs: dask-cuda, docs/tiled.md).

A cluster started for napari can run its workers at a lower CPU priority (``niceness``): tiles
train as fast as ever on an idle machine, and the viewer stays responsive on a busy one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..config import check_int
from ..errors import ConfigError

__all__ = ["ClusterShape", "connect", "default_shape"]


@dataclass(frozen=True)
class ClusterShape:
    """Workers, tiles at a time per worker, torch threads per tile, memory per worker, the
    workers' niceness (0: normal priority; 1-19: yield the CPU to other programs), and whether
    each worker is pinned to a core of its own (:mod:`.placement`)."""

    workers: int
    threads_per_worker: int = 1
    torch_threads: int = 1
    memory_limit: str | int = "auto"
    niceness: int = 0
    pin: bool = False


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def default_shape(device: str = "auto", workers: int | None = None, memory_limit="auto",
                  niceness: int = 0, pin: bool = False):  # fmt: skip
    """The local cluster for this machine (``workers`` overrides the count; ``pin``: one
    core per worker)."""
    cores = _cores()
    check_int("niceness", niceness, 0, 19)
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int)
                                or workers < 1):  # fmt: skip
        raise ConfigError(f"workers must be a positive integer, got {workers!r}")
    if device in ("auto", "cuda"):
        import torch

        if torch.cuda.is_available():
            return ClusterShape(workers or 1, 1, max(1, cores // (workers or 1)), memory_limit,
                                niceness, pin)  # fmt: skip
    count = workers or cores
    if pin and count > cores:
        raise ConfigError(f"cannot pin {count} workers to {cores} cores: one core per worker")
    return ClusterShape(count, 1, max(1, cores // count), memory_limit, niceness, pin)


def connect(client=None, scheduler: str | None = None, shape: ClusterShape | None = None):
    """``(client, owned)``: the caller's client, one for ``scheduler``, or a new LocalCluster's
    (``owned``: close it when done)."""
    from distributed import Client, LocalCluster

    if client is not None:
        return client, False
    if scheduler is not None:
        try:
            return Client(scheduler, timeout="30s"), True
        except OSError as exc:
            raise ConfigError(f"cannot reach the Dask scheduler {scheduler}: {exc}") from None
    shape = shape or default_shape()
    cluster = LocalCluster(
        n_workers=shape.workers,
        threads_per_worker=shape.threads_per_worker,
        processes=True,
        memory_limit=shape.memory_limit,
        dashboard_address=":0",
    )
    client = Client(cluster)
    if shape.niceness:
        from .priority import LowerPriority

        client.register_plugin(LowerPriority(shape.niceness))
    if shape.pin:
        from .placement import PinToCore

        client.register_plugin(PinToCore())
    return client, True


def total_threads(client) -> int:
    """Tiles the cluster runs at once (every worker thread)."""
    info = (
        client.scheduler_info(n_workers=-1)
        if _accepts_n_workers(client)
        else client.scheduler_info()
    )
    return max(1, sum(w.get("nthreads", 1) for w in info.get("workers", {}).values()))


def _accepts_n_workers(client) -> bool:
    import inspect

    return "n_workers" in inspect.signature(client.scheduler_info).parameters
