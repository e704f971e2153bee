"""``Compressed``: a ``.moec`` file's bytes together with the network they decode to.

Whatever produced it (``compress``, ``Compressor.run`` or ``load``), the network holds the
weights decoded from the file's own payload bytes, so decoding a fresh result and decoding the
saved file give identical arrays: what you see is what the file holds.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import correction, families
from .bounded import Bounded
from .families.siren.tutel_backend import resolve_backend, use_backend
from .format import Header, correction_bytes, unpack
from .sampling import Normalization

__all__ = ["Compressed", "Report", "model_from_weights"]


@dataclass(frozen=True)
class Report:
    """What a compression measured: sizes, quality of the stored weights, and the run.

    ``predicted_bytes`` is the size estimated before training; ``file_bytes`` the real one.
    ``quant_multiplier`` is the rate controller's quantization-scale multiplier (1 = nominal
    N-bit levels; 1.0 for float precisions); ``quant_extra_bits`` the bits of precision it
    added to layout groups on top of it (``{"encoder": 2}``: that group's grid is 4x finer).
    ``psnr`` is over the original's data range,
    ``psnr_dtype`` over the dtype's maximum (the papers' convention); ``ssim`` is None for
    volumes thinner than SSIM's window.

    With a bound (``--max-error``): ``max_error`` is the bound promised (data units),
    ``max_error_measured`` the largest error of the decoded file, ``correction_bytes`` what
    the correction layer adds to ``file_bytes`` (``budget_bytes`` is then the model's budget
    and ``ratio`` what the file reaches; ``psnr``/``ssim`` are of the corrected decode); all
    None/0 without one.
    """

    budget_bytes: int
    predicted_bytes: int
    file_bytes: int
    ratio: float
    parameters: int
    hidden_features: int
    w0_first: float | None
    quant_multiplier: float
    psnr: float
    psnr_dtype: float
    ssim: float | None
    steps: int
    seconds: float
    device: str
    stopped_early: bool
    quant_extra_bits: dict[str, int] = dataclasses.field(default_factory=dict)
    max_error: float | None = None
    max_error_measured: float | None = None
    correction_bytes: int = 0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def model_from_weights(header: Header, weights: dict[str, torch.Tensor]) -> torch.nn.Module:
    """The network of ``header`` (its family's) holding ``weights`` (keyed by layout name), in
    eval mode."""
    return families.get(header.family).model_from_weights(header.model, weights)


@dataclass(eq=False)
class Compressed:
    """A compressed volume. Build with ``napari_moec.compress`` or ``napari_moec.load``.

    Attributes
    ----------
    data : bytes
        The complete ``.moec`` file.
    header : Header
        Shape, dtype, intensity range, spacing, architecture, quantization, training summary.
    report : Report or None
        What the compressor measured; None for a loaded file (its header's training summary
        has what the file stores).
    """

    data: bytes
    header: Header
    report: Report | None = None
    _model: torch.nn.Module | None = field(default=None, repr=False)
    #: Full-resolution (image, labels) decoded once by the compressor, handed out as copies.
    _decoded: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)
    #: The correction layer of a file with a guaranteed maximum error, or None.
    _bounded: Bounded | None = field(default=None, repr=False)

    @classmethod
    def from_bytes(cls, data: bytes) -> Compressed:
        """Parse and validate a whole file (raises MoecFormatError) and build its network."""
        header, weights = unpack(data)
        result = cls(bytes(data), header, None, model_from_weights(header, weights))
        if header.correction:
            result.attach_correction(correction_bytes(data, header))
        return result

    def attach_correction(self, raw: bytes) -> None:
        """Parse the file's correction stream (MoecFormatError if corrupt or not this
        volume's) so that every decode applies it."""
        stream = correction.parse(raw, self.header.shape, self.header.dtype)
        self._bounded = Bounded(stream, self.normalization)

    @property
    def max_error(self) -> float | None:
        """The guaranteed maximum error of every decoded voxel (data units), or None."""
        return None if self._bounded is None else self._bounded.max_error

    # -- sizes -------------------------------------------------------------------------
    @property
    def nbytes(self) -> int:
        """Bytes of the file, every byte counted."""
        return len(self.data)

    @property
    def original_nbytes(self) -> int:
        return self.header.original_nbytes

    @property
    def ratio(self) -> float:
        """``original bytes / file bytes``."""
        return self.original_nbytes / self.nbytes

    @property
    def model(self) -> torch.nn.Module:
        assert self._model is not None
        return self._model

    @property
    def normalization(self) -> Normalization:
        h = self.header
        return Normalization(h.vmin, h.vmax, *h.norm)

    @property
    def psnr(self) -> float | None:
        """PSNR over the data range of the stored weights: measured (report) or stored (file)."""
        if self.report is not None:
            return self.report.psnr
        return None if self.header.train is None else self.header.train.psnr

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
        if roi is None and stride == 1 and self._decoded is not None:
            return self._decoded[0].copy()
        values, _ = self._decode(roi, stride, device, labels=False)
        return self._finish(values, roi, stride)

    def _finish(self, values: np.ndarray, roi, stride) -> np.ndarray:
        """The network's normalised output -> voxels in the original dtype: corrected when
        the file has a bound (from the unclipped values), else clipped and rounded."""
        if self._bounded is not None:
            return self._bounded.apply(values, roi, stride)
        return self.normalization.invert(values, np.dtype(self.header.dtype))

    def expert_labels(self, roi=None, stride=1, *, device=None) -> np.ndarray:
        """Top-1 expert (argmax of the router) of each voxel, uint8: the learned partition."""
        if roi is None and stride == 1 and self._decoded is not None:
            return self._decoded[1].copy()
        return self._decode(roi, stride, device, values=False)[1]

    def decode_with_labels(self, roi=None, stride=1, *, device=None):
        """:meth:`decode` and :meth:`expert_labels` from one pass of the network."""
        if roi is None and stride == 1 and self._decoded is not None:
            return self._decoded[0].copy(), self._decoded[1].copy()
        values, labels = self._decode(roi, stride, device)
        return self._finish(values, roi, stride), labels

    def use_backend(self, backend: str = "auto") -> Compressed:
        """Decode through MoE ``backend`` ("auto", "native" or "tutel";
        :mod:`napari_moec.families.siren.tutel_backend`) from now on; returns self. A decoding
        choice only: the file is the same, and the voxels agree up to float rounding."""
        device = next(self.model.parameters()).device
        use_backend(self.model, resolve_backend(backend, device))
        return self

    def _decode(self, roi, stride, device, *, values: bool = True, labels: bool = True):
        """The file's family decodes (each family has its own fast region path)."""
        family = families.get(self.header.family)
        return family.decode_region(
            self._on(device), self.header.shape, roi, stride, device=device,
            values=values, labels=labels,
        )  # fmt: skip

    def _on(self, device) -> torch.nn.Module:
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
        model, model_text = families.codec(h.family).describe(h.model)
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
            "model": model,
            "model_text": model_text,
            "quantization": {
                "precision": h.quant.precision,
                "per_channel": h.quant.per_channel,
                "entropy_coded": h.quant.entropy,
            },
            "training": None if h.train is None else h.train.to_json(),
            "max_error": self.max_error,
            "correction_bytes": h.correction,
        }
