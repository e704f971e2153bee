"""Progress events yielded by ``Compressor.run``: frozen, holding only numbers and numpy arrays,
so a GUI thread can read them without touching torch."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import ModelConfig

__all__ = ["Finalizing", "Preview", "Progress", "RegionPreview", "Started", "TrainEvent"]


@dataclass(frozen=True)
class Started:
    """Training is about to begin."""

    total_steps: int
    time_limit: float | None
    num_parameters: int
    predicted_nbytes: int
    budget_nbytes: int
    device: str
    model: ModelConfig


@dataclass(frozen=True)
class Progress:
    """One optimiser step done. Loss statistics refresh every ``report_every`` steps.

    ``psnr`` is the estimate from the training batches' MSE over the data range;
    ``expert_load`` the fraction of points whose first choice is each expert;
    ``dropped_fraction`` the share of points that overflowed every chosen expert's capacity;
    ``phase`` is "train", "frozen" (router frozen) or "qat" (quantization in the loop).
    """

    step: int
    total_steps: int
    loss: float
    psnr: float
    expert_load: np.ndarray
    dropped_fraction: float
    lr: float
    elapsed: float
    eta: float
    phase: str


@dataclass(frozen=True)
class RegionPreview:
    """A region a front end asked for (e.g. the plane shown), decoded at full resolution.

    ``roi`` is one ``slice(start, stop)`` per axis; ``image``/``labels`` have its shape.
    """

    roi: tuple[slice, ...]
    image: np.ndarray
    labels: np.ndarray


@dataclass(frozen=True)
class Preview:
    """The current reconstruction and expert partition: the whole volume on the grid
    ``[::stride]`` (``image``, ``labels``, raw expert indices) and, at full resolution, the
    regions requested with :meth:`~napari_moec.training.Compressor.request_regions`."""

    step: int
    stride: tuple[int, ...]
    image: np.ndarray
    labels: np.ndarray
    regions: tuple[RegionPreview, ...] = ()


@dataclass(frozen=True)
class Finalizing:
    """Training ended (``stopped`` by request or not); quantizing, coding and measuring."""

    step: int
    stopped: bool


TrainEvent = Started | Progress | Preview | Finalizing
