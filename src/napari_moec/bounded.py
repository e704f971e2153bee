"""``--max-error`` wired to a whole-volume compression: the writer's and the reader's glue.

:mod:`napari_moec.correction` codes and verifies a correction stream from a prediction; this
module says *which* prediction and keeps the writer and the reader on the same one: the stored
(dequantized) network's output in the data's units (:func:`~napari_moec.correction.data_units`),
never clipped or rounded before the correction is applied.

Budget semantics: the network is trained and stored at the asked ratio exactly as without a
bound; the correction is added after it, so the file is model + correction. The bound is the
promise (verified before the file is kept); the ratio is what the file reaches (``Report``,
``moec info``).

Router near-ties (SIREN MoE with more experts than it evaluates): where the k-th and (k+1)-th
router logits are within :data:`TIE_GAP`, another machine's float rounding may pick another
expert, a jump larger than the correction's margin. :func:`router_unstable` finds those voxels
and the writer *anchors* them (codes them against the range's low end, whatever the network
predicts there). The grid family's router is not checked yet (see ``docs/format.md``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from . import correction
from .decode import CHUNK_VOXELS
from .families.siren.moe import MoESiren
from .sampling import Normalization, flat_index_coords

__all__ = ["TIE_GAP", "Bounded", "encode", "router_unstable"]

#: Router logits closer than this (top-k against the next) count as a tie another machine may
#: break the other way (float32 logits of O(1-10) differ by ~1e-6 between devices).
TIE_GAP = 1e-4


class Bounded:
    """A parsed correction stream and what it needs to apply: the file's normalisation."""

    def __init__(self, stream: correction.Stream, norm: Normalization) -> None:
        self.stream = stream
        self.norm = norm

    @property
    def max_error(self) -> float:
        """The promised bound, in the data's units."""
        return self.stream.max_error

    def apply(self, values: np.ndarray, roi=None, stride=1) -> np.ndarray:
        """The corrected voxels of ``roi[::stride]`` from the network's normalised output."""
        return correction.apply(self.stream, correction.data_units(values, self.norm), roi, stride)


@torch.no_grad()
def router_unstable(
    model: torch.nn.Module, shape: Sequence[int], device: torch.device
) -> np.ndarray | None:
    """Voxels whose expert choice is a near-tie (bool, the volume's shape), or None where the
    network has no discrete choice to flip (one expert, every expert evaluated, another
    family)."""
    if not isinstance(model, MoESiren) or model.gate is None:
        return None
    k, n = model.config.top_k, model.config.num_experts
    if k >= n:
        return None
    total = math.prod(shape)
    out = np.empty(total, bool)
    chunk = CHUNK_VOXELS.get(device.type, CHUNK_VOXELS["cuda"])
    was_training = model.training
    model.eval()
    try:
        for begin in range(0, total, chunk):
            flat = torch.arange(begin, min(begin + chunk, total), device=device)
            logits = model.gate(model.encoder(flat_index_coords(flat, tuple(shape))))
            top = torch.topk(logits, k + 1, dim=-1).values
            gap = top[:, k - 1] - top[:, k]
            out[begin : begin + flat.numel()] = (gap < TIE_GAP).cpu().numpy()
    finally:
        model.train(was_training)
    return out.reshape(tuple(shape))


def encode(
    volume: np.ndarray,
    values: np.ndarray,
    norm: Normalization,
    max_error: float,
    unstable: np.ndarray | None = None,
) -> tuple[bytes, np.ndarray, float]:
    """The verified correction stream of ``volume`` for the network output ``values``
    (normalised, the stored weights' full decode), the corrected volume a reader decodes, and
    the largest error measured on it.

    Raises
    ------
    ConfigError
        A bound the range or dtype cannot take.
    BoundViolation
        The stream misses the bound (no file must be kept).
    """
    prediction = correction.data_units(values, norm)
    value_range = (norm.vmin, norm.vmax)
    raw = correction.encode(volume, prediction, max_error, value_range=value_range,
                            unstable=unstable)  # fmt: skip
    stream = correction.parse(raw, volume.shape, volume.dtype)
    decoded = correction.apply(stream, prediction)
    worst = float(np.abs(decoded.astype(np.float64) - volume.astype(np.float64)).max())
    if worst > stream.max_error:  # encode verified it; this is the file's own decode
        raise correction.BoundViolation(f"decoded error {worst} exceeds {stream.max_error}")
    return raw, decoded, worst
