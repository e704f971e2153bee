"""Shared fixtures: small seeded volumes and the real scans in ../shared/data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


def smooth_volume(shape=(16, 16, 16), seed=0, dtype=np.uint16) -> np.ndarray:
    """A seeded smooth volume with two distinct regions (so routing has something to learn)."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    r = np.sqrt(sum(g**2 for g in grids[-3:]))
    base = np.where(r < 0.6, 0.8 + 0.1 * np.sin(4 * grids[-1]), 0.2 + 0.1 * grids[-2])
    base = base + 0.02 * rng.standard_normal(shape)
    base = (base - base.min()) / (base.max() - base.min())
    if np.dtype(dtype).kind == "f":
        return (base * 100).astype(dtype)
    info = np.iinfo(dtype)
    lo, hi = (max(info.min, -1000), min(info.max, 4000))
    return (lo + base * (hi - lo)).astype(dtype)


@pytest.fixture
def volume16():
    return smooth_volume()


@pytest.fixture(scope="session")
def hipct():
    path = SHARED_DATA / "hipct_brain_sci_64.tif"
    if not path.exists():
        pytest.skip(f"shared data not found: {path}")
    return tifffile.imread(path)


@pytest.fixture(scope="module")
def client():
    """A Dask client of 2 one-thread worker processes (2 GiB each), one per test module."""
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
        memory_limit="2GiB",
    ) as cluster, distributed.Client(cluster) as c:  # fmt: skip
        yield c


@pytest.fixture
def one_thread():
    """Torch on one thread for the test (bytes that must not depend on the thread count)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
