"""The live view of a training run: the plane the user looks at, sharp; the rest, coarse.

Each :class:`~napari_moec.events.Preview` holds the whole volume on a strided grid (at most
``PreviewConfig.voxels`` voxels) and, at full resolution, the regions the front end asked for
with :meth:`~napari_moec.training.Compressor.request_regions`. Here:

- :class:`FollowView` asks, from the GUI thread, for the plane shown in napari's 2D view (the
  displayed axes whole, the others at the current slice) whenever the slice, the displayed axes
  or the 2D/3D mode change. In 3D view it asks for nothing: the strided volume is all there is.
- :func:`compose_frame`, run in the worker thread, upsamples the strided volume to the full
  grid (nearest neighbour) and writes the full-resolution regions over it: a :class:`LiveFrame`.
- :class:`LiveLayers` copies each frame into the two live layers' own arrays on the GUI thread.

Cost of one preview, whatever the volume: the network evaluates at most ``voxels + region_voxels``
points (65 536 + 1 048 576 by default; a plane larger than ``region_voxels`` is cut to the window
around the camera's centre); the worker spends O(volume) numpy time on the upsampling; the GUI
thread copies ``volume voxels × (itemsize + 1)`` bytes and napari redraws the shown plane.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..events import Preview
from .layers import LABELS_OPACITY, expert_labels_for_display, layer_names

__all__ = [
    "CONTOUR_OPACITY",
    "LABELS_CONTOUR",
    "FollowView",
    "LiveFrame",
    "LiveLayers",
    "camera_of",
    "compose_frame",
    "displayed_plane",
    "final_frame",
]

#: In 2D view the live partition is drawn as outlines this many data pixels wide (napari's
#: Labels ``contour``) at ``CONTOUR_OPACITY``, so the reconstruction between the outlines is not
#: tinted at all. napari cannot draw contours in 3D (it warns on every redraw): there the labels
#: are filled at ``layers.LABELS_OPACITY``, like a file opened from the File menu.
LABELS_CONTOUR = 1
CONTOUR_OPACITY = 0.4


@dataclass(frozen=True)
class LiveFrame:
    """What the live layers show, at full resolution: ``image`` in the volume's dtype and
    ``labels`` as displayed (expert index + 1). ``regions`` are the ROIs that hold network
    output at full resolution (the rest is the strided preview, upsampled); ``final`` marks the
    decode of the stored file at the end of a run."""

    step: int
    image: np.ndarray
    labels: np.ndarray
    regions: tuple[tuple[slice, ...], ...] = ()
    final: bool = False


def _nearest(n: int, stride: int, samples: int) -> np.ndarray:
    """For each of ``n`` voxels, the index of the nearest of ``samples`` taken every
    ``stride`` voxels (sample ``i`` sits on voxel ``i * stride``)."""
    return np.minimum((2 * np.arange(n) + stride) // (2 * stride), samples - 1)


def compose_frame(preview: Preview, shape: Sequence[int]) -> LiveFrame:
    """The full-resolution frame of ``preview`` for a volume of ``shape`` (runs in the worker).

    The strided grid is upsampled by nearest neighbour; the full-resolution regions replace it
    where they lie. The preview's arrays are not modified.
    """
    index = np.ix_(
        *(
            _nearest(n, s, g)
            for n, s, g in zip(shape, preview.stride, preview.image.shape, strict=True)
        )
    )
    image = preview.image[index]
    labels = preview.labels.astype(np.uint8, copy=False)[index]
    for region in preview.regions:
        image[region.roi] = region.image
        labels[region.roi] = region.labels
    labels = expert_labels_for_display(labels, copy=False)  # a fresh array: offset in place
    regions = tuple(region.roi for region in preview.regions)
    return LiveFrame(preview.step, image, labels, regions)


def final_frame(step: int, image: np.ndarray, labels: np.ndarray) -> LiveFrame:
    """The frame of a finished run: its full decode (``labels`` as raw expert indices)."""
    shown = expert_labels_for_display(labels)
    return LiveFrame(step, image, shown, (tuple(slice(0, n) for n in image.shape),), final=True)


def camera_of(viewer):
    """The camera: ``viewer.scene.camera`` since napari 0.9, ``viewer.camera`` before."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None and hasattr(scene, "camera") else viewer.camera


def displayed_plane(viewer, layer, max_voxels: int) -> tuple[slice, ...] | None:
    """The part of ``layer``'s data that napari's 2D view shows, as one slice per data axis.

    The displayed axes are taken whole and the others at the current slice (rounded to the
    nearest voxel, as napari slices). When the plane has more than ``max_voxels`` voxels, the
    window of at most that many around the camera's centre. None in 3D view, or when the
    layer has none of the displayed axes.
    """
    dims = viewer.dims
    if dims.ndisplay != 2:
        return None
    shape = layer.data.shape
    offset = dims.ndim - layer.ndim  # world axes in front of the layer's
    shown = [axis - offset for axis in dims.displayed if axis - offset >= 0]
    if not shown:
        return None
    point = list(dims.point)
    centre = camera_of(viewer).center[-len(dims.displayed) :]
    for axis, value in zip(dims.displayed, centre, strict=True):
        point[axis] = value
    data_point = layer.world_to_data(point)  # takes the layer's last ``ndim`` world axes
    plane = math.prod(shape[a] for a in shown)
    fraction = min(1.0, (max_voxels / plane) ** (1 / len(shown)))
    roi = []
    for axis, n in enumerate(shape):
        if axis in shown:
            width = n if fraction == 1.0 else max(1, math.floor(n * fraction))
            start = int(np.clip(round(data_point[axis] - width / 2), 0, n - width))
            roi.append(slice(start, start + width))
        else:
            i = int(np.clip(round(data_point[axis]), 0, n - 1))
            roi.append(slice(i, i + 1))
    return tuple(roi)


class FollowView:
    """Keep a compressor decoding, at full resolution, the plane the viewer shows of ``layer``.

    Connects to the viewer's dims (slice, displayed axes, 2D/3D) and camera centre (for planes
    cut to a window); each change recomputes the plane (microseconds) and hands it to the
    thread-safe :meth:`~napari_moec.training.Compressor.request_regions`: the next preview
    decodes it. Call :meth:`disconnect` when the run ends.
    """

    def __init__(self, viewer, layer, compressor, max_voxels: int) -> None:
        self.viewer = viewer
        self.layer = layer
        self.compressor = compressor
        self.max_voxels = max_voxels
        self._emitters = [
            viewer.dims.events.current_step,
            viewer.dims.events.ndisplay,
            viewer.dims.events.order,
            camera_of(viewer).events.center,
        ]
        for emitter in self._emitters:
            emitter.connect(self.update)
        self.update()

    def update(self, event=None) -> None:
        """Request the plane shown now (nothing in 3D view)."""
        roi = displayed_plane(self.viewer, self.layer, self.max_voxels)
        self.compressor.request_regions([] if roi is None else [roi])

    def disconnect(self) -> None:
        for emitter in self._emitters:
            emitter.disconnect(self.update)
        self._emitters = []


def _refresh_in_place(layer) -> None:
    """Redraw ``layer`` after its data array was overwritten in place (same shape and dtype)."""
    try:
        layer.refresh(extent=False)  # the extent did not change: skip recomputing it
    except TypeError:  # a napari whose refresh() takes no keywords
        layer.refresh()


class LiveLayers:
    """The reconstruction and partition layers of one training run, at full resolution.

    Both have the source's scale, translate and units, so they overlay it voxel for voxel.
    Each layer shows an array this object allocated (:meth:`prepare`'s blank one); a frame is
    copied into it and the layer refreshed. Assigning ``layer.data`` instead makes napari
    recompute the layer's dims, extent and transforms: measured 20-65 ms per layer on a busy
    2-core machine, against 7-15 ms for the in-place refresh. Frames are never written to.

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
        self.names = layer_names(source.name)
        self.scale = tuple(source.scale)
        self.translate = tuple(source.translate)
        self.contrast_limits = tuple(source.contrast_limits)
        self.units = tuple(source.units)  # same units as the source, or napari warns
        self.image_layer = None
        self.labels_layer = None
        #: The arrays this object allocated and gave to its layers, by layer kind.
        self._buffers: dict[str, np.ndarray] = {}
        viewer.dims.events.ndisplay.connect(self._style_labels)
        # napari runs a plugin's callbacks after its own, so on a switch to 3D it re-slices the
        # outlined layer once (and warns that contours are not drawn in 3D) before
        # _style_labels turns the outlines into a fill: nothing for the user to act on.
        warnings.filterwarnings(
            "ignore", "Contours are not displayed during 3D rendering", UserWarning
        )

    def _style_labels(self, event=None) -> None:
        """Outlines in 2D view, a light fill in 3D (where napari draws no contours)."""
        if self.labels_layer is None:
            return
        flat = self.viewer.dims.ndisplay == 2
        self.labels_layer.contour = LABELS_CONTOUR if flat else 0
        self.labels_layer.opacity = CONTOUR_OPACITY if flat else LABELS_OPACITY

    def _find(self, name: str, kind: str):
        for layer in self.viewer.layers:
            if layer.name == name and type(layer).__name__.lower() == kind:
                return layer
        return None

    def prepare(self, shape: Sequence[int], dtype) -> None:
        """Create both layers (blank) before training starts.

        Layer creation is the one slow napari operation (0.2-1 s under software GL); doing it
        on the Start click keeps every later frame a cheap copy.
        """
        blank = np.zeros(tuple(shape), dtype=dtype)
        self.show(LiveFrame(0, blank, np.zeros(blank.shape, np.uint8)))

    def show(self, frame: LiveFrame) -> None:
        """Show ``frame`` (re-creating a layer the user deleted meanwhile)."""
        # Re-find by name each time: the user may have deleted or renamed a layer meanwhile.
        self.image_layer = self._find(self.names.image, "image")
        self.labels_layer = self._find(self.names.labels, "labels")
        common = {"scale": self.scale, "translate": self.translate, "units": self.units}
        if self.image_layer is None:
            self._buffers["image"] = buffer = frame.image.copy()
            self.image_layer = self.viewer.add_image(
                buffer,
                name=self.names.image,
                contrast_limits=self.contrast_limits,
                colormap="gray",
                **common,
            )
        else:
            self._copy(self.image_layer, "image", frame.image)
        if self.labels_layer is None:
            self._buffers["labels"] = buffer = frame.labels.copy()
            self.labels_layer = self.viewer.add_labels(
                buffer, name=self.names.labels, opacity=LABELS_OPACITY, **common
            )
            self._style_labels()
        else:
            self._copy(self.labels_layer, "labels", frame.labels)

    def _copy(self, layer, kind: str, data: np.ndarray) -> None:
        """Put ``data`` in ``layer``: copied into our own array when it fits, else assigned
        as a copy (a volume of another shape: the layer is set up anew, once)."""
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
        self._buffers[kind] = buffer = data.copy()
        layer.data = buffer
