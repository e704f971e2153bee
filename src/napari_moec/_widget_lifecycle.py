"""Lifetime of the dock widget: which layers it may compress, and stopping work on close.

napari gives a plugin widget no "closing" signal: a closed dock widget is un-parented, and closing
the viewer closes its main window. The mixin watches both so that a running worker is stopped
(it would otherwise keep training, and post previews into a dead viewer).
"""

from __future__ import annotations

import numpy as np
from napari.layers import Image
from qtpy.QtCore import QEvent, QObject

__all__ = ["LifecycleMixin", "is_lazy", "is_volume", "no_source_message", "volume_data"]


def is_volume(layer) -> bool:
    """A layer the compressor can take: a 3D/4D non-RGB Image, single- or multiscale (the
    full-resolution level is compressed). Checked on metadata only, never on voxels."""
    return isinstance(layer, Image) and not layer.rgb and layer.ndim in (3, 4)


def volume_data(layer):
    """The full-resolution array of ``layer`` (level 0 of a multiscale), not read."""
    return layer.data[0] if layer.multiscale else layer.data


def is_lazy(layer) -> bool:
    """Whether the layer's voxels are not all in memory (dask, zarr, a multiscale pyramid, a
    store decoded on demand): such layers are compressed tile by tile, never read whole."""
    return layer.multiscale or not isinstance(volume_data(layer), np.ndarray)


def no_source_message(layers) -> str:
    """Why no layer can be compressed: no image at all, or each image's kind and shape."""
    images = [layer for layer in layers if isinstance(layer, Image)]
    if not images:
        return "MoEC: no image layer. Open a 3D or 4D volume (File › Open Sample › CT head)."
    why = []
    for layer in images:
        kind = "RGB" if layer.rgb else f"{layer.ndim}D"
        why.append(f"'{layer.name}' is {kind} (shape {tuple(volume_data(layer).shape)})")
    return "MoEC compresses 3D (ZYX) or 4D volumes, but " + "; ".join(why) + "."


class LifecycleMixin:
    """Stop the worker of :class:`~napari_moec._widget.MoecWidget` when it or napari closes."""

    def shutdown(self) -> None:
        """Stop the worker without finishing the file: the widget or the viewer is closing."""
        if self.worker is not None:
            self._closing = True  # queued previews must not touch a closing viewer
            if self._compressor is not None:
                self._compressor.stop()
            self.worker.quit()  # acts at the next yield, also while paused

    def _watch_window(self) -> None:
        """Watch the napari main window for Close: closing the viewer must end the worker."""
        window = self.window()
        if window is not self and window is not self._watched:
            if self._watched is not None:
                self._watched.removeEventFilter(self)
            window.installEventFilter(self)
            self._watched = window

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:
        # getattr: Qt may still deliver events while Python tears the widget down at exit,
        # when its attributes are gone; an exception here makes Qt abort the interpreter.
        if obj is getattr(self, "_watched", None) and event.type() == QEvent.Type.Close:
            self.shutdown()
        return super().eventFilter(obj, event)

    def event(self, event: QEvent) -> bool:
        # napari undocks a closed plugin widget with setParent(None): that is our "closed".
        if event.type() == QEvent.Type.ParentChange and self.parent() is None:
            self.shutdown()
        return super().event(event)

    def closeEvent(self, event) -> None:
        self.shutdown()
        super().closeEvent(event)
