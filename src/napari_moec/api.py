"""The library API: ``compress``, ``load``, ``Compressor``."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .compressed import Compressed
from .errors import MoecFormatError
from .format import MAGIC
from .training import Compressor

__all__ = ["compress", "load"]

#: Refuse to read files larger than this: the largest sensible .moec is a few MB.
MAX_FILE_BYTES = 1 << 30


def compress(array: np.ndarray, ratio: float = 256.0, **options) -> Compressed:
    """Compress a 3D/4D volume to at most ``array.nbytes / ratio`` bytes.

    ``options`` are those of :class:`Compressor` (``num_experts``, ``top_k``, ``train``,
    ``quant``, ``device``, ``spacing``...). Blocks until training ends.

    Examples
    --------
    >>> import napari_moec
    >>> c = napari_moec.compress(volume, ratio=64)        # doctest: +SKIP
    >>> c.save("head.moec"); c.ratio, c.report["psnr"]    # doctest: +SKIP
    """
    run = Compressor(array, ratio, **options).run()
    while True:
        try:
            next(run)
        except StopIteration as done:
            return done.value


def load(path: str | os.PathLike) -> Compressed:
    """Open a ``.moec`` file. Raises MoecFormatError for anything that is not a valid one."""
    path = Path(path)
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise MoecFormatError(f"{path.name}: {size} bytes is too large for a .moec file")
    data = path.read_bytes()
    if not data.startswith(MAGIC):
        raise MoecFormatError(f"{path.name}: not a .moec file (bad magic)")
    return Compressed.from_bytes(data)
