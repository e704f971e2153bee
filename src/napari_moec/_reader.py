"""npe2 reader for ``.moec`` files: the decompressed volume and its expert partition.

napari asks every reader whose filename pattern matches; returning None lets another plugin try,
so we only claim files that both end in ``.moec`` and start with our magic bytes. A file that has
our magic but is broken raises :class:`~napari_moec.errors.MoecFormatError`, which napari shows
to the user: it *is* ours, and saying why it cannot be read is more useful than silence.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from ._layers import result_layer_data
from .api import load
from .compressed import Compressed
from .format import MAGIC

__all__ = ["napari_get_reader", "read_moec"]


def _is_moec(path: str | os.PathLike) -> bool:
    path = Path(path)
    if path.suffix.lower() != ".moec" or not path.is_file():
        return False
    try:
        with path.open("rb") as fh:
            return fh.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


def napari_get_reader(path: str | os.PathLike | list) -> Callable | None:
    """Return :func:`reader_function` if ``path`` is a ``.moec`` file, else None.

    Parameters
    ----------
    path
        One path, or a list whose paths must all be ``.moec`` files.
    """
    paths = path if isinstance(path, list | tuple) else [path]
    if not paths or not all(_is_moec(p) for p in paths):
        return None
    return reader_function


def read_moec(path: str | os.PathLike) -> tuple[Compressed, list[tuple]]:
    """Open one ``.moec`` file: the :class:`Compressed` and its layer data.

    The dock widget's Load… calls this too, so both routes give identical layers.

    Raises
    ------
    MoecFormatError
        The file is not a valid ``.moec`` file (truncated, corrupted, unknown version).
    """
    compressed = load(path)
    name = Path(path).name.removesuffix(".moec")
    return compressed, result_layer_data(compressed, name, path=str(path))


def reader_function(path: str | os.PathLike | list) -> list[tuple]:
    """Read one or more ``.moec`` files into LayerData tuples (Image + Labels for each)."""
    paths = path if isinstance(path, list | tuple) else [path]
    layers: list[tuple] = []
    for p in paths:
        layers.extend(read_moec(p)[1])
    return layers
