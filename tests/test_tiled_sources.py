"""Reading a region of a ``.npy`` source: the same voxels as the memory map, without its
resident pages (a Dask worker under a memory limit was killed copying a region out of a map)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from napari_moec.errors import ConfigError
from napari_moec.tiled import sources
from napari_moec.tiled.sources import SourceRef, read_npy_region


def _slices(draw, shape):
    out = []
    for n in shape:
        a = draw(st.integers(0, n))
        b = draw(st.integers(0, n))
        out.append(slice(min(a, b), max(a, b)))
    return tuple(out)


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_a_region_reads_the_voxels_the_map_holds(tmp_path_factory, data):
    shape = data.draw(st.lists(st.integers(1, 9), min_size=3, max_size=4).map(tuple), label="shape")
    dtype = data.draw(st.sampled_from(["<u2", ">f4", "<f8", "u1"]), label="dtype")
    volume = np.arange(np.prod(shape)).reshape(shape).astype(dtype)
    path = tmp_path_factory.mktemp("npy") / "v.npy"
    np.save(path, volume)
    box = _slices(data.draw, shape)
    region = read_npy_region(path, box)
    np.testing.assert_array_equal(region, volume[box])
    assert region.dtype == volume.dtype and region.flags.c_contiguous


def test_rows_one_at_a_time_headers_and_fallbacks(tmp_path, monkeypatch):
    volume = np.random.default_rng(0).normal(size=(3, 5, 7, 11)).astype(np.float32)
    box = (slice(1, 3), slice(0, 4), slice(2, 7), slice(3, 10))
    path = tmp_path / "v.npy"
    np.save(path, volume)
    monkeypatch.setattr(sources, "READ_BLOCK_BYTES", 1)  # a row is larger: row by row
    np.testing.assert_array_equal(SourceRef("npy", str(path)).read(box), volume[box])
    # a version 2.0 header, a Fortran-order file, steps: all read what the map holds
    v2 = tmp_path / "v2.npy"
    with open(v2, "wb") as fh:
        np.lib.format.write_array(fh, volume, version=(2, 0))
    np.testing.assert_array_equal(read_npy_region(v2, box), volume[box])
    fortran = tmp_path / "f.npy"
    np.save(fortran, np.asfortranarray(volume))
    np.testing.assert_array_equal(read_npy_region(fortran, box), volume[box])
    stepped = (slice(0, 3, 2), slice(None), slice(1, 7, 3), slice(None))
    np.testing.assert_array_equal(read_npy_region(path, stepped), volume[stepped])


def test_a_file_shorter_than_its_header_says_is_refused(tmp_path):
    path = tmp_path / "v.npy"
    np.save(path, np.zeros((8, 16, 16), np.float32))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 5000])
    with pytest.raises(ConfigError, match="ends before its header"):
        read_npy_region(path, (slice(0, 8), slice(0, 16), slice(0, 16)))
    # a header that claims rows of 10^12 voxels sizes nothing: the file's size is checked first
    hostile = tmp_path / "hostile.npy"
    with open(hostile, "wb") as fh:
        header = {"descr": "<f4", "fortran_order": False, "shape": (2, 2, 10**12)}
        np.lib.format.write_array_header_1_0(fh, header)
        fh.write(bytes(64))
    with pytest.raises(ConfigError, match="ends before its header"):
        read_npy_region(hostile, (slice(0, 1), slice(0, 2), slice(0, 4)))


def test_reading_a_region_keeps_no_pages_of_the_file(tmp_path):
    """The resident peak of reading a 2 MB region of a 256 MB file stays near the region
    (copied out of a memory map, the file's pages around every row the region touches
    became resident: 1.6 GB for a 125 MB region of a 4 GB file)."""
    path = tmp_path / "big.npy"
    big = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(64, 1024, 1024))
    big[:, ::7, ::5] = 1.0
    big.flush()
    del big
    script = textwrap.dedent(
        f"""
        import resource
        import numpy as np
        from napari_moec.tiled.sources import SourceRef
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        region = SourceRef("npy", {str(path)!r}).read(
            (slice(0, 64), slice(300, 380), slice(500, 600))
        )
        assert region.sum() > 0
        print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
        """
    )
    grown = int(subprocess.run([sys.executable, "-c", script], check=True,
                               capture_output=True, text=True).stdout)  # fmt: skip
    assert grown < 32, f"reading a 2 MB region grew the resident peak by {grown} MB"
