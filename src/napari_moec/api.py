"""The library API: ``compress`` and ``load`` (``Compressor`` is the same job as a generator)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .compressed import Compressed
from .config import ArchConfig, BoundConfig, QuantConfig, RunConfig, TrainConfig
from .errors import ConfigError, MoecFormatError
from .format import MAGIC
from .run_options import configs_from_options, option_names
from .training import Compressor

__all__ = ["compress", "load"]

#: Refuse to read files larger than this: the largest sensible .moec is a few MB.
MAX_FILE_BYTES = 1 << 30
#: Keywords of :class:`Compressor` that are not options of the config dataclasses.
_COMPRESSOR_KEYWORDS = {"axes", "spacing", "unit", "norm_range", "preview"}


def compress(
    array: np.ndarray,
    ratio: float | None = None,
    *,
    arch: ArchConfig | None = None,
    train: TrainConfig | None = None,
    quant: QuantConfig | None = None,
    run: RunConfig | None = None,
    bound: BoundConfig | None = None,
    **options,
) -> Compressed:
    """Compress a 3D/4D volume to at most ``array.nbytes / ratio`` bytes. Blocks until done.

    Parameters
    ----------
    array
        3D (ZYX) or 4D (TZYX/CZYX) array of uint8, uint16, int16 or float32.
    ratio
        Target ``original bytes / file bytes`` (>= 1); None is 256. With ``target_psnr=P``
        (grid model) the file is instead the smallest whose decoded PSNR is >= P, and a ratio
        given is the least ratio allowed (a byte ceiling; default
        :data:`~napari_moec.training.PSNR_CAP_RATIO`).
    arch, train, quant, run, bound
        Full configurations (:class:`ArchConfig`, :class:`TrainConfig`, :class:`QuantConfig`,
        :class:`RunConfig`, :class:`BoundConfig`).
    **options
        :class:`Compressor` keywords (``axes``, ``spacing``, ``unit``, ``preview``) and single
        options of the configurations by name (``steps=500``, ``num_experts=3``,
        ``precision="fp16"``, ``device="cpu"``), applied on top of ``arch``/``train``/...
        ``max_error=E`` (data units) or ``max_error_rel=f`` (fraction of the range) guarantee
        every decoded voxel within the bound: the model is trained at ``ratio`` and a verified
        correction layer is added, so the file is larger than ``array.nbytes / ratio``.

    Examples
    --------
    >>> import napari_moec
    >>> c = napari_moec.compress(volume, ratio=64, steps=1000)   # doctest: +SKIP
    >>> c.save("head.moec"); c.ratio, c.report.psnr              # doctest: +SKIP
    >>> c = napari_moec.compress(volume, target_psnr=40, model="grid")  # doctest: +SKIP
    """
    keywords = {k: options.pop(k) for k in list(options) if k in _COMPRESSOR_KEYWORDS}
    names = option_names()
    for name in options:
        if name not in names:  # a typo must not pass silently
            raise ConfigError(f"compress() got an unknown option {name!r}")
    base = {"arch": arch, "train": train, "quant": quant, "run": run, "bound": bound}
    configs = configs_from_options(options, base)
    return Compressor(array, ratio, **configs, **keywords).fit()


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
