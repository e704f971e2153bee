"""Progress of a tiled compression, as frozen dataclasses holding plain numbers, so a front end
(the CLI's progress bar, the napari widget on its GUI thread) reads them without touching Dask or
torch. :meth:`TiledCompressor.run` yields them and returns a :class:`TiledReport`."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

__all__ = ["ScanProgress", "TileFinished", "TiledEvent", "TiledReport", "TiledStarted", "psnr_of"]


def psnr_of(sse: float, voxels: int) -> float:
    """PSNR (dB) over the volume's range from a sum of squared range-normalised errors."""
    if voxels == 0:
        return math.nan
    return math.inf if sse <= 0 else 10 * math.log10(voxels / sse)


@dataclass(frozen=True)
class ScanProgress:
    """Tiles scanned (range, NaN check, constant tiles, difficulty) before any training."""

    done: int
    total: int


@dataclass(frozen=True)
class TiledStarted:
    """The plan is made and the store's metadata written; training starts.

    ``resumed`` tiles were finished by an earlier run and are kept; ``todo`` network tiles
    remain. Bytes are the whole store's budget and what the original takes.
    """

    dest: str
    shape: tuple[int, ...]
    tile: tuple[int, ...]
    margin: tuple[int, ...]
    total_tiles: int
    network_tiles: int
    constant_tiles: int
    empty_tiles: int
    resumed: int
    todo: int
    budget_bytes: int
    original_bytes: int
    ratio: float
    workers: int


@dataclass(frozen=True)
class TileFinished:
    """One tile is in the store. ``done``/``total`` count every tile; ``bytes_done`` their
    chunk bytes; ``running_psnr`` is over every finished tile's voxels; ``eta`` in seconds from
    this run's pace (NaN until a network tile finished)."""

    index: tuple[int, ...]
    kind: str
    nbytes: int
    psnr: float
    hidden: int
    seconds: float
    done: int
    total: int
    bytes_done: int
    running_psnr: float
    elapsed: float
    eta: float


@dataclass(frozen=True)
class TiledReport:
    """What a tiled compression made (all sizes in bytes; PSNR over the volume's range).

    ``ratio`` is ``original_bytes / store_bytes`` with every chunk and metadata byte counted
    (for ``.ozx``, the file). ``seam_penalty`` is ``psnr_interior - psnr_faces`` (dB) over the
    network tiles: faces are the voxel layers a tile shares with its neighbours.
    """

    dest: str
    shape: tuple[int, ...]
    dtype: str
    tile: tuple[int, ...]
    margin: tuple[int, ...]
    target_ratio: float
    original_bytes: int
    store_bytes: int
    chunk_bytes: int
    metadata_bytes: int
    ratio: float
    total_tiles: int
    network_tiles: int
    constant_tiles: int
    empty_tiles: int
    resumed: int
    psnr: float
    psnr_network: float
    psnr_faces: float
    psnr_interior: float
    seam_penalty: float
    seconds: float
    tile_seconds: float
    peak_rss: int
    workers: int
    stopped: bool
    allocation: str
    #: The bound every voxel keeps (data units) or None, the largest error measured on the
    #: network tiles as written, and the bytes of their correction streams (on top of the
    #: networks' budget: ``ratio`` is then what the store reaches, not a promise).
    max_error: float | None = None
    max_error_measured: float | None = None
    correction_bytes: int = 0
    #: The PSNR every tile was made to reach (``psnr`` is the store's), or None.
    target_psnr: float | None = None
    #: The network tiles' task seconds summed (``tile_seconds`` is their training's part)
    #: and the share that is not training: the per-tile overhead (issue 24).
    tile_wall_seconds: float = 0.0
    overhead_share: float = 0.0
    #: Largest resident memory of a worker while a tile ran, split: anonymous (what the
    #: worker holds) and file-backed (mapped pages the kernel may drop); and the most
    #: anonymous memory one tile added to its worker's (:mod:`~.memory`).
    peak_anon: int = 0
    peak_file: int = 0
    tile_anon: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


TiledEvent = ScanProgress | TiledStarted | TileFinished
