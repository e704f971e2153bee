"""Where tiles run: a Dask distributed ``Client`` given by the caller, one connected to a
scheduler address, or a ``LocalCluster`` sized for this machine.

Local default: one worker process per core, one tile at a time each, one torch thread per tile
(independent small networks scale across processes far better than across threads of one
matmul), memory split evenly between workers. With a CUDA GPU and device "auto"/"cuda": one
worker on the GPU (several GPUs: dask-cuda, docs/tiled.md).

A cluster started for napari can run its workers at a lower CPU priority (``niceness``): tiles
train as fast as ever on an idle machine, and the viewer stays responsive on a busy one.

The workers' allocator (:data:`WORKER_MALLOC`). Dask's nanny starts each worker with
``MALLOC_TRIM_THRESHOLD_=65536`` (``distributed.nanny.pre-spawn-environ``) so that freed memory
goes back to the system. Setting any of glibc's malloc thresholds turns off its dynamic mmap
threshold, so every allocation above 128 kB became an ``mmap``/``munmap`` pair, its pages
zeroed by the kernel on first touch; a training step allocates and frees dozens of tensors of
a few MB (one float per latent), so a grid tile trained 2.9x slower in a worker than in a plain
process (a 128x136x136 macaque region: 81 against 27 ms a step, one thread; the same 76 ms in a
plain process with the nanny's variable set) and the issue's "sys time 18 of 42 CPU-minutes".
Local workers started here get a 32 MiB mmap threshold (glibc's own dynamic ceiling) and a
64 MiB trim threshold: a step's tensors are reused from the heap, and freed memory still goes
back to the system above that. A cluster the caller gives (``client``, ``scheduler``) keeps its
own environment: set these two variables there (docs/tiled.md).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass

from ..config import check_int
from ..errors import ConfigError

__all__ = ["WORKER_MALLOC", "ClusterShape", "connect", "default_shape"]

#: glibc malloc settings of the local workers' processes (module docstring).
WORKER_MALLOC = {"MALLOC_MMAP_THRESHOLD_": 32 << 20, "MALLOC_TRIM_THRESHOLD_": 64 << 20}


@dataclass(frozen=True)
class ClusterShape:
    """Workers, tiles at a time per worker, torch threads per tile, memory per worker, the
    workers' niceness (0: normal priority; 1-19: yield the CPU to other programs), and whether
    each worker is pinned to cores of its own, as many as its torch threads (:mod:`.placement`)."""

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
    """The local cluster for this machine (``workers`` overrides the count; ``pin``: each
    worker on cores of its own, one per torch thread)."""
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
    with _worker_environ():
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

        client.register_plugin(PinToCore(shape.torch_threads))
    return client, True


@contextmanager
def _worker_environ():
    """:data:`WORKER_MALLOC` in the environment the nanny spawns local workers with, this
    process's environment as it was afterwards. The nanny takes each pre-spawn variable from
    this process's environment before Dask's configuration, and writes them into it while it
    spawns (so one earlier cluster, ours or not, would otherwise decide the next one's)."""
    import dask

    saved = {k: os.environ.get(k) for k in WORKER_MALLOC}
    environ = {**dask.config.get("distributed.nanny.pre-spawn-environ", {}), **WORKER_MALLOC}
    os.environ.update({k: str(v) for k, v in WORKER_MALLOC.items()})
    try:
        with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}):
            yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


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
