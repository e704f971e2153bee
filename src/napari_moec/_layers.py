"""Turning compressed volumes into napari layers: shared by the reader and the dock widget.

The reader and the widget's Load… and live preview all go through here, so a ``.moec`` opened
from the File menu and one produced by training look the same: same names, same scale, same
metadata keys. Expert labels are shown as ``expert index + 1`` because napari draws label 0 as
transparent, and every expert should be visible in the partition overlay.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .compressed import Compressed

__all__ = [
    "EXPERT_OFFSET",
    "LiveLayers",
    "difference",
    "moec_metadata",
    "result_layer_data",
    "warm_up_layer_machinery",
]

_warmed_up = False


def warm_up_layer_machinery() -> None:
    """Pay napari's first-layer costs now (once per process), not when the user presses Start.

    Measured under Xvfb on 2 cores, the first Labels layer of a session spent 1.2-2 s in
    one-off work on the GUI thread: pandas imported lazily for layer features (0.45 s), the
    label colormap's colour-space code (0.24 s), the vispy overlay visuals (0.3-0.4 s). The dock
    widget calls this while it opens, where torch is being imported anyway, by building a
    throwaway Image and Labels layer (attached to no viewer) and importing the visuals.
    """
    global _warmed_up
    if _warmed_up:
        return
    _warmed_up = True
    from napari.layers import Image, Labels

    Image(np.zeros((2, 2, 2), np.uint16))
    Labels(np.zeros((2, 2, 2), np.uint8))
    try:  # napari internals: a missing module only means no warm-up for it
        import napari._vispy.layers.image
        import napari._vispy.layers.labels
        import napari._vispy.overlays.labels_polygon  # noqa: F401
    except ImportError:
        pass


#: Added to the router's expert index so that expert 0 is not napari's transparent label 0.
EXPERT_OFFSET = 1


def moec_metadata(compressed: Compressed, path: str | None = None) -> dict[str, Any]:
    """What a user asks of a compressed layer: ratio, quality, experts, and the full info.

    PSNR/SSIM come from the compressor's report when the volume was just trained, else from the
    training summary stored in the file (the file keeps PSNR but not SSIM).
    """
    meta = {
        "moec_ratio": round(compressed.ratio, 2),
        "moec_file_bytes": compressed.nbytes,
        "moec_psnr": compressed.psnr,
        "moec_ssim": None if compressed.report is None else compressed.report.ssim,
        "moec_experts": compressed.header.model.num_experts,
        "moec_info": compressed.info(),
    }
    if path is not None:
        meta["moec_path"] = str(path)
    return meta


def result_layer_data(
    compressed: Compressed,
    name: str,
    *,
    image: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    path: str | None = None,
) -> list[tuple]:
    """LayerData tuples for a compressed volume: the decoded Image and the expert Labels.

    Parameters
    ----------
    compressed
        The volume; decoded here at full resolution unless ``image``/``labels`` are given
        (the widget decodes in its worker thread and passes them in).
    name
        Base name: layers are ``"<name> MoEC"`` and ``"<name> experts"``.
    image, labels
        Already decoded full-resolution arrays (labels as raw expert indices).
    path
        The file, recorded in the metadata.
    """
    header = compressed.header
    if image is None:
        image = compressed.decode()
    if labels is None:
        labels = compressed.expert_labels()
    scale = tuple(header.spacing) if header.spacing else (1.0,) * len(header.shape)
    meta = moec_metadata(compressed, path)
    common: dict[str, Any] = {"scale": scale, "metadata": meta}
    if header.unit:
        common["units"] = header.unit
    image_meta = {
        **common,
        "name": f"{name} MoEC",
        "colormap": "gray",
        "contrast_limits": (float(header.vmin), float(header.vmax)),
    }
    labels_meta = {**common, "name": f"{name} experts", "opacity": 0.4}
    return [
        (image, image_meta, "image"),
        (expert_labels_for_display(labels), labels_meta, "labels"),
    ]


def expert_labels_for_display(labels: np.ndarray) -> np.ndarray:
    """Raw top-1 expert indices (uint8) -> label values shown by napari (index + 1)."""
    return labels.astype(np.uint8) + np.uint8(EXPERT_OFFSET)


def difference(original: np.ndarray, decoded: np.ndarray) -> np.ndarray:
    """``decoded - original`` as float32, so that signed errors of unsigned data stay signed."""
    return decoded.astype(np.float32) - original.astype(np.float32)


def _set_scale(layer, scale: tuple) -> None:
    """Assign ``scale`` only when it changes: napari refreshes the whole layer on assignment,
    which cost ~150 ms per preview on a busy 2-core machine."""
    if not np.allclose(layer.scale, scale):
        layer.scale = scale


def _refresh_in_place(layer) -> None:
    """Redraw ``layer`` after its data array was overwritten in place (same shape and dtype)."""
    try:
        layer.refresh(extent=False)  # the extent did not change: skip recomputing it
    except TypeError:  # a napari whose refresh() takes no keywords
        layer.refresh()


class LiveLayers:
    """The reconstruction and partition layers of one training run, created on first use.

    Previews arrive on a strided grid; the layers are scaled by ``stride × source scale`` and
    keep the source's translate, so voxel ``i`` of a preview sits where voxel ``i·stride`` of the
    source does and the overlay stays registered as the stride changes.

    Each layer shows an array this object allocated (``prepare``'s blank placeholder); a preview
    of the same shape and dtype is copied into it and the layer refreshed. Assigning
    ``layer.data`` instead makes napari recompute the layer's dims, extent and transforms:
    measured 20-65 ms per layer on a busy 2-core machine, against 7-15 ms for the in-place
    refresh. Arrays handed in by the caller (previews, the final result) are never written to.

    Parameters
    ----------
    viewer
        The napari viewer (public proxy is fine).
    source
        The Image layer being compressed.
    """

    def __init__(self, viewer, source) -> None:
        self.viewer = viewer
        self.name = source.name
        self.scale = np.asarray(source.scale, dtype=float)
        self.translate = np.asarray(source.translate, dtype=float)
        self.contrast_limits = tuple(source.contrast_limits)
        self.units = tuple(source.units)  # same units as the source, or napari warns
        self.image_layer = None
        self.labels_layer = None
        #: The arrays this object allocated and gave to its layers, by layer kind.
        self._buffers: dict[str, np.ndarray] = {}

    @property
    def image_name(self) -> str:
        return f"{self.name} MoEC"

    @property
    def labels_name(self) -> str:
        return f"{self.name} experts"

    def _find(self, name: str, kind: str):
        for layer in self.viewer.layers:
            if layer.name == name and type(layer).__name__.lower() == kind:
                return layer
        return None

    def prepare(self, shape: Sequence[int], stride: Sequence[int], dtype) -> None:
        """Create both layers (blank) on the preview grid before training starts.

        Layer creation is the one slow napari operation (0.2-1 s under software GL); doing it
        up front keeps every later preview a cheap data swap.
        """
        grid = tuple(len(range(0, n, s)) for n, s in zip(shape, stride, strict=True))
        self.update(np.zeros(grid, dtype=dtype), None, stride)

    def update(
        self,
        image: np.ndarray,
        labels: np.ndarray | None,
        stride: Sequence[int],
        metadata: dict | None = None,
    ) -> None:
        """Show ``image`` and raw expert ``labels`` (None: blank) on the grid ``[::stride]``."""
        scale = tuple(self.scale * np.asarray(stride, dtype=float))
        if labels is None:
            shown = np.zeros(image.shape, dtype=np.uint8)
        else:
            shown = expert_labels_for_display(labels)  # a new array: ours to keep
        # Re-find by name each time: the user may have deleted or renamed a layer meanwhile.
        self.image_layer = self._find(self.image_name, "image")
        self.labels_layer = self._find(self.labels_name, "labels")
        if self.image_layer is None:
            self._buffers["image"] = buffer = image.copy()
            self.image_layer = self.viewer.add_image(
                buffer,
                name=self.image_name,
                scale=scale,
                translate=tuple(self.translate),
                units=self.units,
                contrast_limits=self.contrast_limits,
                colormap="gray",
            )
        else:
            _set_scale(self.image_layer, scale)
            self._show(self.image_layer, "image", image, owned=False)
        if self.labels_layer is None:
            self._buffers["labels"] = shown
            self.labels_layer = self.viewer.add_labels(
                shown,
                name=self.labels_name,
                scale=scale,
                translate=tuple(self.translate),
                units=self.units,
                opacity=0.4,
            )
        else:
            _set_scale(self.labels_layer, scale)
            self._show(self.labels_layer, "labels", shown, owned=True)
        if metadata is not None:
            self.image_layer.metadata.update(metadata)
            self.labels_layer.metadata.update(metadata)

    def _show(self, layer, kind: str, data: np.ndarray, *, owned: bool) -> None:
        """Put ``data`` in ``layer``: copied into our own array when it fits, else assigned.

        ``owned``: ``data`` is a fresh array nobody else holds, so it can become our buffer.
        """
        buffer = self._buffers.get(kind)
        if (
            buffer is not None
            and layer.data is buffer
            and buffer.shape == data.shape
            and buffer.dtype == data.dtype
        ):
            np.copyto(buffer, data)
            _refresh_in_place(layer)
            return
        buffer = data if owned else data.copy()
        layer.data = buffer
        self._buffers[kind] = buffer
