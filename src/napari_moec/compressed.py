"""``Compressed``: a ``.moec`` file's bytes together with the network they decode to.

Whatever produced it (``compress``, ``Compressor.run`` or ``load``), the network is rebuilt from
the file's own bytes, so decoding a fresh result and decoding the saved file give identical
arrays: what you see is what the file holds.
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .decode import evaluate
from .format import Header, unpack
from .nn.moe import MoESiren
from .sampling import Normalization

__all__ = ["Compressed"]


@dataclass(eq=False)
class Compressed:
    """A compressed volume. Build with ``napari_moec.compress`` or ``napari_moec.load``.

    Attributes
    ----------
    data : bytes
        The complete ``.moec`` file.
    header : Header
        Shape, dtype, intensity range, spacing, architecture, quantization, training summary.
    report : dict
        What the compressor measured (predicted vs actual bytes, PSNR/SSIM, seconds); empty for
        a loaded file except for the training summary stored in it.
    """

    data: bytes
    header: Header
    report: dict = field(default_factory=dict)
    _model: MoESiren | None = field(default=None, repr=False)

    @classmethod
    def from_bytes(cls, data: bytes, report: dict | None = None) -> Compressed:
        header, weights = unpack(data)
        model = MoESiren(header.model)
        model.load_state_dict(weights)
        model.eval()
        return cls(bytes(data), header, dict(report or {}), model)

    # -- sizes -------------------------------------------------------------------------
    @property
    def nbytes(self) -> int:
        """Bytes of the file, every byte counted."""
        return len(self.data)

    @property
    def original_nbytes(self) -> int:
        return math.prod(self.header.shape) * np.dtype(self.header.dtype).itemsize

    @property
    def ratio(self) -> float:
        """``original bytes / file bytes``."""
        return self.original_nbytes / self.nbytes

    @property
    def model(self) -> MoESiren:
        assert self._model is not None
        return self._model

    @property
    def normalization(self) -> Normalization:
        h = self.header
        return Normalization(h.vmin, h.vmax, *h.norm)

    # -- decoding ----------------------------------------------------------------------
    def decode(self, roi=None, stride=1, *, device=None) -> np.ndarray:
        """Voxels ``roi[::stride]`` in the original dtype and range.

        Parameters
        ----------
        roi
            None for the whole volume, ``"z0:z1,y0:y1,x0:x1"``, or one slice / (start, stop)
            pair per axis.
        stride
            Keep every ``stride``-th voxel (an int, or one per axis): a lower-resolution grid.
        """
        values = evaluate(self._on(device), self.header.shape, roi, stride, device=device)
        return self.normalization.invert(values, np.dtype(self.header.dtype))

    def expert_labels(self, roi=None, stride=1, *, device=None) -> np.ndarray:
        """Top-1 expert (argmax of the router) of each voxel, uint8: the learned partition."""
        return evaluate(
            self._on(device), self.header.shape, roi, stride, labels=True, device=device
        )

    def _on(self, device) -> MoESiren:
        if device is not None:
            self._model = self.model.to(torch.device(device))
        return self.model

    # -- files -------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write the file atomically: a temporary file in the same folder, fsync, rename.
        A failed save leaves any existing file at ``path`` untouched."""
        path = Path(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(self.data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    def info(self) -> dict:
        """A JSON-ready summary: what ``moec info`` prints."""
        h = self.header
        m = h.model
        return {
            "shape": list(h.shape),
            "axes": h.axes,
            "dtype": h.dtype,
            "range": [h.vmin, h.vmax],
            "spacing": list(h.spacing) if h.spacing else None,
            "unit": h.unit,
            "file_bytes": self.nbytes,
            "original_bytes": self.original_nbytes,
            "ratio": round(self.ratio, 2),
            "model": {
                "hidden_features": m.hidden_features,
                "num_experts": m.num_experts,
                "top_k": m.top_k,
                "expert_layers": m.expert_layers,
                "gate_hidden": m.gate_hidden,
                "w0": m.w0,
                "w0_first": m.w0_first,
            },
            "quantization": {
                "precision": h.quant.precision,
                "per_channel": h.quant.per_channel,
                "entropy_coded": h.quant.entropy,
            },
            "training": dict(h.train),
        }
