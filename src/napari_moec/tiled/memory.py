"""A worker's resident memory split the way it matters for a memory limit: *anonymous* pages
(the tile's arrays, the network, torch's buffers: what the worker really holds) and
*file-backed* pages (a memory-mapped source's pages while a region is copied out of it, shared
libraries: the kernel can drop them at any time). ``ru_maxrss`` and Dask's monitor see only the
sum, which is how a worker under a 2 GB limit once reported 4.6 GB (issue 24).

Linux only (``/proc/self/status``); elsewhere every figure is 0.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

__all__ = ["MemoryWatch", "resident"]

_FIELDS = {"RssAnon:": "anon", "RssFile:": "file", "RssShmem:": "shmem"}


def resident() -> dict[str, int]:
    """This process's resident memory now, bytes: ``anon``, ``file``, ``shmem``."""
    out = {"anon": 0, "file": 0, "shmem": 0}
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


@dataclass
class MemoryWatch:
    """Peaks of anonymous and file-backed resident memory over the samples taken (a tile
    samples after each stage and about once a second while it trains), and the anonymous
    memory at the first sample: the worker's baseline (interpreter, torch, earlier tiles'
    caches) that the tile's own share is measured against."""

    baseline_anon: int = -1
    peak_anon: int = 0
    peak_file: int = 0

    def sample(self) -> None:
        now = resident()
        if self.baseline_anon < 0:
            self.baseline_anon = now["anon"]
        self.peak_anon = max(self.peak_anon, now["anon"])
        self.peak_file = max(self.peak_file, now["file"])
