"""A tile's memory figures: the sampled anonymous/file-backed peaks miss what lives between two
samples; the kernel's high-water mark, reset when a tile starts, does not."""

import json
import os
import platform
import subprocess
import sys

import numpy as np
import pytest

from napari_moec.tiled.cluster import WORKER_MALLOC
from napari_moec.tiled.memory import MemoryWatch, resident, worker_peak

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="/proc/self/status is Linux's"
)

MB = 1 << 20


def _transient(nbytes: int) -> None:
    """Touch ``nbytes`` of fresh anonymous memory and free it."""
    block = np.ones(nbytes // 8)
    assert block.sum() > 0


def test_the_exact_peak_sees_a_transient_the_samples_miss():
    _transient(300 * MB)  # an earlier tile's peak, before this one starts
    watch = MemoryWatch()
    watch.sample()
    assert watch.baseline_resident > 0
    assert watch.peak_resident < watch.baseline_resident + 100 * MB  # the mark was reset
    _transient(200 * MB)
    watch.sample()
    assert watch.peak_anon < watch.baseline_anon + 100 * MB  # between the samples: missed
    assert watch.peak_resident >= watch.baseline_resident + 190 * MB
    # the worker's peak over its life still counts the earlier tile's
    assert worker_peak() >= watch.baseline_resident + 290 * MB
    assert worker_peak() >= resident()["hwm"]


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_release_heap_returns_the_free_pages_a_tile_left_inside_the_heap():
    """A worker's allocator settings (``cluster.WORKER_MALLOC``) keep arrays below 32 MiB on
    the heap and return free memory only from its top: arrays freed under a live one stay
    resident until :func:`release_heap` (run in a process started with those settings)."""
    script = """
import json, numpy as np
from napari_moec.tiled.memory import release_heap, resident
MB = 1 << 20
blocks = [np.ones(MB // 8) for _ in range(300)]  # 300 MB of 1 MB arrays, on the heap
last = blocks.pop()  # the heap's top stays in use
before = resident()["anon"]
del blocks
freed = resident()["anon"]
released = release_heap()
after = resident()["anon"]
print(json.dumps([before, freed, after, released]))
"""
    env = dict(os.environ) | {k: str(v) for k, v in WORKER_MALLOC.items()}
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    )
    before, freed, after, released = json.loads(out.stdout.splitlines()[-1])
    assert released
    assert freed > before - 50 * MB  # glibc kept the freed arrays' pages
    assert after < freed - 250 * MB  # released
