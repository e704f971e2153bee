"""Turning compressed volumes into napari layers: shared by the reader and the dock widget.

The reader, the widget's Load…, its live view (``live_view``) and Compare all go through here,
so a ``.moec`` opened from the File menu and one produced by training look the same: same names
(:func:`layer_names`), same scale, same metadata keys, same partition style. Expert labels are
shown as ``expert index + 1`` because napari draws label 0 as transparent, and every expert
should be visible in the partition overlay.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from ..compressed import Compressed

__all__ = [
    "EXPERT_OFFSET",
    "LABELS_OPACITY",
    "LayerNames",
    "difference",
    "expert_indices",
    "expert_labels_for_display",
    "layer_names",
    "lazy_layer_data",
    "moec_metadata",
    "result_layer_data",
    "warm_up_layer_machinery",
]


class LayerNames(NamedTuple):
    """The names of the layers made from one volume called ``base``."""

    image: str  #: the decompressed volume (live during training)
    labels: str  #: the learned partition (Labels)
    difference: str  #: decoded - original, made by Compare


def layer_names(base: str) -> LayerNames:
    """``"<base> MoEC"``, ``"<base> experts"`` and ``"<base> difference"``: the one place that
    names the plugin's layers (reader, live view, Load…, Compare and the tests use it)."""
    return LayerNames(f"{base} MoEC", f"{base} experts", f"{base} difference")


#: Opacity of the partition (Labels) layer a file opens with. Filled at 0.4 it hid the
#: reconstruction under it; at 0.25 the tint still tells the experts apart and the anatomy shows
#: through. The live view draws outlines instead (``live_view.LABELS_CONTOUR``): napari takes
#: ``contour`` only as a property set on a layer, not from a reader's layer data.
LABELS_OPACITY = 0.25

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
        Base name of the layers (:func:`layer_names`).
    image, labels
        Already decoded full-resolution arrays (labels as raw expert indices).
    path
        The file, recorded in the metadata.
    """
    header = compressed.header
    if image is None or labels is None:
        image, labels = compressed.decode_with_labels()  # one pass of the network for both
    scale = tuple(header.spacing) if header.spacing else (1.0,) * len(header.shape)
    meta = moec_metadata(compressed, path)
    common: dict[str, Any] = {"scale": scale, "metadata": meta}
    if header.unit:
        common["units"] = header.unit
    names = layer_names(name)
    image_meta = {
        **common,
        "name": names.image,
        "colormap": "gray",
        "contrast_limits": (float(header.vmin), float(header.vmax)),
    }
    labels_meta = {**common, "name": names.labels, "opacity": LABELS_OPACITY}
    return [
        (image, image_meta, "image"),
        (expert_labels_for_display(labels), labels_meta, "labels"),
    ]


def lazy_layer_data(
    blocks, name: str, *, spacing, unit: str | None, contrast_limits, metadata: dict
) -> list[tuple]:
    """LayerData tuples of a volume decoded on demand (:mod:`._lazy`): a multiscale Image and
    a multiscale Labels layer, level k at stride 2^k, the coarsest at most 64 voxels a side.

    ``contrast_limits`` (the original's range, stored with the volume) spares napari its own
    estimate, which would decode the coarsest level whole before the first view.
    """
    from .lazy import pyramid

    common: dict[str, Any] = {"multiscale": True, "metadata": metadata}
    common["scale"] = tuple(spacing) if spacing else (1.0,) * len(blocks.shape)
    if unit:
        common["units"] = unit
    names = layer_names(name)
    image_meta = {**common, "name": names.image, "colormap": "gray",
                  "contrast_limits": tuple(float(c) for c in contrast_limits)}  # fmt: skip
    labels_meta = {**common, "name": names.labels, "opacity": LABELS_OPACITY}
    return [
        (pyramid(blocks), image_meta, "image"),
        (pyramid(blocks, labels=True), labels_meta, "labels"),
    ]


def expert_labels_for_display(labels: np.ndarray, *, copy: bool = True) -> np.ndarray:
    """Raw top-1 expert indices -> the uint8 label values napari shows (index + EXPERT_OFFSET).

    The one place the offset is added. ``copy=False`` adds it in place when ``labels`` is
    already a uint8 array the caller owns (a frame composed for the live view), saving a copy.
    """
    shown = labels.astype(np.uint8, copy=copy)
    shown += np.uint8(EXPERT_OFFSET)
    return shown


def expert_indices(shown: np.ndarray) -> np.ndarray:
    """Label values shown by napari -> raw expert indices: the inverse of
    :func:`expert_labels_for_display`, the one place the offset is taken off."""
    return shown - np.uint8(EXPERT_OFFSET)


def difference(original: np.ndarray, decoded: np.ndarray) -> np.ndarray:
    """``decoded - original`` as float32, so that signed errors of unsigned data stay signed."""
    return decoded.astype(np.float32) - original.astype(np.float32)
