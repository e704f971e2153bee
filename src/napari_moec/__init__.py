"""napari-moec: learned-partition neural compression of 3D/4D volumes.

A volume is compressed by overfitting a Mixture-of-Experts SIREN to it; the quantized,
entropy-coded weights are the ``.moec`` file. This package imports no Qt: the napari plugin
lives in ``napari_moec._napari.widget`` and friends, loaded by napari through ``napari.yaml``.
"""

from .api import compress, load
from .compressed import Compressed, Report
from .config import ArchConfig, ModelConfig, PreviewConfig, QuantConfig, RunConfig, TrainConfig
from .errors import (
    ConfigError,
    MoecError,
    MoecFormatError,
    TrainingError,
    UnsupportedVersionError,
)
from .events import Finalizing, Preview, Progress, Started
from .plan import Plan, plan
from .training import Compressor

__version__ = "0.1.0"

#: Names served lazily from napari_moec.tiled, so ``import napari_moec`` imports no Dask.
_TILED = ("TiledCompressor", "TiledStore", "compress_tiled", "open_tiled")


def __getattr__(name: str):
    if name in _TILED:
        from . import tiled

        return getattr(tiled, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ArchConfig",
    "Compressed",
    "Compressor",
    "ConfigError",
    "Finalizing",
    "ModelConfig",
    "MoecError",
    "MoecFormatError",
    "Plan",
    "Preview",
    "PreviewConfig",
    "Progress",
    "QuantConfig",
    "Report",
    "RunConfig",
    "Started",
    "TiledCompressor",
    "TiledStore",
    "TrainConfig",
    "TrainingError",
    "UnsupportedVersionError",
    "__version__",
    "compress",
    "compress_tiled",
    "load",
    "open_tiled",
    "plan",
]
