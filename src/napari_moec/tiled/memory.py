"""A worker's resident memory split the way it matters for a memory limit: *anonymous* pages
(the tile's arrays, the network, torch's buffers: what the worker really holds) and
*file-backed* pages (a memory-mapped source's pages while a region is copied out of it, shared
libraries: the kernel can drop them at any time). ``ru_maxrss`` and Dask's monitor see only the
sum, which is how a worker under a 2 GB limit once reported 4.6 GB (issue 24).

Linux only (``/proc/self/status``); elsewhere every figure is 0 (but :func:`worker_peak`).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

__all__ = ["MemoryWatch", "release_heap", "resident", "worker_peak"]

_FIELDS = {"RssAnon:": "anon", "RssFile:": "file", "RssShmem:": "shmem", "VmHWM:": "hwm"}
#: The process's resident peak before the last reset of the kernel's high-water mark (a tile
#: resets it to measure its own peak: the first :meth:`MemoryWatch.sample`).
_peak_before_reset = 0
#: libc's ``malloc_trim`` once looked up (:func:`release_heap`); False where there is none.
_malloc_trim = None


def resident() -> dict[str, int]:
    """This process's resident memory now, bytes: ``anon``, ``file``, ``shmem``, and ``hwm``
    (the kernel's high-water mark of their sum since the process started or the mark was
    last reset)."""
    out = {"anon": 0, "file": 0, "shmem": 0, "hwm": 0}
    if not sys.platform.startswith("linux"):  # pragma: no cover - not Linux
        return out
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                key = _FIELDS.get(line.split(maxsplit=1)[0] if line.strip() else "")
                if key is not None:
                    out[key] = int(line.split()[1]) * 1024  # the kernel writes kB
    except OSError:  # pragma: no cover - /proc not mounted
        pass
    return out


def release_heap() -> bool:
    """Give the heap's free pages back to the system (glibc's ``malloc_trim(0)``); False where
    there is no glibc.

    A worker's heap keeps what a tile freed: with the workers' 32 MiB mmap threshold
    (``cluster.WORKER_MALLOC``) a tile's tensors below it live on the heap, and glibc returns
    free memory on its own only from the heap's top, above 64 MiB. On a 1024³ build (256³
    tiles, session 14) a worker's anonymous memory between tiles grew from 200 to 700 MB over
    its tiles, which the next tile's peak stacked on. ``malloc_trim`` releases every free page,
    wherever it is, so a tile starts from what the worker really holds.
    """
    global _malloc_trim
    if _malloc_trim is None:
        try:
            import ctypes

            _malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
            _malloc_trim.argtypes = [ctypes.c_size_t]
        except (OSError, AttributeError):
            _malloc_trim = False
    return bool(_malloc_trim and _malloc_trim(0) is not None)


def _reset_high_water_mark() -> bool:
    """Reset the kernel's resident high-water mark (``VmHWM``) to the current resident size
    (``/proc/self/clear_refs``, Linux >= 4.0); False where that is not possible."""
    global _peak_before_reset
    before = resident()["hwm"]
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as refs:
            refs.write("5")
    except OSError:
        return False
    _peak_before_reset = max(_peak_before_reset, before)
    return True


def worker_peak() -> int:
    """This process's resident peak over its life, bytes (what ``ru_maxrss`` reports where
    nothing resets the high-water mark): the largest of every tile's peak; ``ru_maxrss``
    itself where there is no ``/proc``."""
    peak = max(_peak_before_reset, resident()["hwm"])
    if peak:
        return peak
    import resource  # (Unix; ru_maxrss is in kB, on macOS in bytes)

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


@dataclass
class MemoryWatch:
    """Peaks of anonymous and file-backed resident memory over the samples taken (a tile
    samples after each stage and about once a second while it trains), and the anonymous
    memory at the first sample: the worker's baseline (interpreter, torch, earlier tiles'
    caches) that the tile's own share is measured against.

    Samples miss what lives between them (a second's transient array), so the first sample
    also resets the kernel's resident high-water mark: :attr:`peak_resident` is then the
    exact peak of anonymous plus file-backed memory while the tile ran (0 where the mark
    cannot be reset), against :attr:`baseline_resident`."""

    baseline_anon: int = -1
    peak_anon: int = 0
    peak_file: int = 0
    baseline_resident: int = 0
    _exact: bool = False

    def sample(self) -> None:
        first = self.baseline_anon < 0
        if first:
            self._exact = _reset_high_water_mark()
        now = resident()
        if first:
            self.baseline_anon = now["anon"]
            self.baseline_resident = now["anon"] + now["file"] + now["shmem"]
        self.peak_anon = max(self.peak_anon, now["anon"])
        self.peak_file = max(self.peak_file, now["file"])

    @property
    def peak_resident(self) -> int:
        """The exact resident peak since the first sample, bytes (0: not measurable here)."""
        return resident()["hwm"] if self._exact else 0
