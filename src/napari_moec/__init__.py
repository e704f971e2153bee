"""napari-moec: learned-partition neural compression of 3D/4D volumes.

A volume is compressed by overfitting a Mixture-of-Experts SIREN to it; the quantized,
entropy-coded weights are the ``.moec`` file. This package imports no Qt: the napari plugin
lives in ``napari_moec._widget`` and friends, loaded by napari through ``napari.yaml``.
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
    "TrainConfig",
    "TrainingError",
    "UnsupportedVersionError",
    "__version__",
    "compress",
    "load",
    "plan",
]
